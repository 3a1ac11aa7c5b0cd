"""The "ray" backend: one Ray actor per slot (optional extra `envgym[ray]`, imported when first used).

Timeouts and restarts as in the "process" backend. The actors are spread over the nodes of the Ray cluster
(`WorkerOptions.ray_address`: "auto" or a head's "HOST:PORT"; default a local Ray started in this process);
an env that starts a sandbox starts it on its actor's node. An actor lost with its node fails only its episode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from envgym.pool.backend import PoolBackend, WorkerOptions
from envgym.pool.host import EnvHost, EnvResult, EnvSource


class RayBackend(PoolBackend):
    """One actor per slot, each holding an `EnvHost`."""

    def __init__(self, source: EnvSource, num_envs: int, options: WorkerOptions):
        self.source = source
        self._ray = _import_ray(options.ray_address)
        self._actor_class = self._ray.remote(num_cpus=0)(EnvHost)
        nodes = self._cpu_nodes()
        self.actors: list[Any] = [self._start_actor(slot, nodes, soft=False) for slot in range(num_envs)]

    def call(self, calls: Mapping[int, tuple], timeouts: Mapping[int, float]) -> dict[int, EnvResult]:
        ray = self._ray
        refs = {getattr(self.actors[slot], call[0]).remote(*call[1:]): slot for slot, call in calls.items()}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=max(timeouts.values()))
        results: dict[int, EnvResult] = {}
        for ref in ready:
            slot = refs[ref]
            try:
                results[slot] = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self.restart(slot)
                results[slot] = EnvResult(error=f"env actor died during {calls[slot][0]}: {exc}; restarted")
        for ref in pending:
            slot = refs[ref]
            self.restart(slot)
            results[slot] = EnvResult(error=f"{calls[slot][0]} timed out after {timeouts[slot]:g}s; "
                                            "the actor was killed and restarted", seconds=timeouts[slot])
        return results

    def ask(self, slot: int, call: tuple, timeout: float) -> Any:
        method, *args = call
        return self._ray.get(getattr(self.actors[slot], method).remote(*args), timeout=timeout)

    def restart(self, slot: int) -> None:
        """Kill the slot's actor and start a fresh one."""
        self._ray.kill(self.actors[slot])
        self.actors[slot] = self._start_actor(slot, self._cpu_nodes())
        self.restarts += 1

    def add_slot(self) -> None:
        self.actors.append(self._start_actor(len(self.actors), self._cpu_nodes()))

    def close(self) -> None:
        for actor in self.actors:
            try:
                self._ray.get(actor.close.remote(), timeout=5)
            except Exception:  # a dead actor has nothing left to close
                pass
            self._ray.kill(actor)

    def _cpu_nodes(self) -> list[str]:
        """The ids of the cluster's live nodes with CPUs, sorted."""
        return sorted(node["NodeID"] for node in self._ray.nodes()
                      if node["Alive"] and node["Resources"].get("CPU", 0) > 0)

    def _start_actor(self, slot: int, nodes: list[str], soft: bool = True) -> Any:
        """Slot `slot`'s env actor, on the `nodes` in turn (slot i on the i-th, modulo; see `_cpu_nodes`).

        Envs reserve no CPU, so Ray's default policy would pack every actor onto
        this node, and SPREAD is best effort (seen placing 4 of 4 on one of two
        nodes). The pool's first actors hold to their node (a soft affinity fell
        back to this node under load); a restarted one's affinity is soft, so a
        node gone since the list was read leaves the choice to Ray.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(nodes[slot % len(nodes)], soft=soft) if nodes else "DEFAULT"
        actor = self._actor_class.options(scheduling_strategy=strategy)
        return actor.remote(self.source.make_env, self.source.make_kwargs, self.source.spec)


def _import_ray(address: str | None = None):
    """Ray, initialised: connected to the cluster at `address` ("auto", "HOST:PORT"), or a local one if None.

    Raises ConnectionError, naming the address, when no cluster answers there
    (`ray.init` itself would retry for minutes).
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the 'ray' EnvPool backend needs Ray: pip install 'envgym[ray]'") from exc
    if not ray.is_initialized():
        if address is not None:
            _check_ray_answers(address)
        # Actors import env classes the way this process does (a script's folder, a test folder).
        # "local", not None: None would join whatever cluster RAY_ADDRESS or /tmp/ray's address file names
        ray.init(address=address or "local", include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    return ray


def _check_ray_answers(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless a Ray head answers at `address` within `timeout` seconds."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address

    hint = "start one with `ray start --head` and pass its HOST:PORT (or 'auto' on a node of the cluster)"
    try:
        resolved = canonicalize_bootstrap_address(address)
    except ConnectionError as exc:
        raise ConnectionError(f"Ray address {address!r}: no running Ray cluster found ({exc}); {hint}") from None
    if resolved is None:  # "local": Ray starts one here
        return
    host, _, port = resolved.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"Ray address {address!r} ({resolved}) does not answer: {exc}; {hint}") from None
