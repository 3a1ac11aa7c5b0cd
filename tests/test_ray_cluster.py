"""The Ray env pool on a local two-node Ray cluster (Ray's own `ray.cluster_utils.Cluster`).

Env actors spread over the nodes; removing a node while its envs are mid-episode
costs only retries of those episodes (the rollout's failure policy), and no
episode carries turns of an env that died.
"""

import os
import re
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

import cluster_envs  # noqa: E402,F401  (registers cluster/WhereAmI-v0)
from envgym.pool import EnvPool  # noqa: E402
from envgym.rollout import collect_groups  # noqa: E402

LOCATION = re.compile(r"\[node (\S+) pid (\d+) env (\d+)\]")


class Guess50:
    """A text policy that always answers 50 (the env ignores what it is told, bar the reward)."""

    def act(self, requests):
        return ["50"] * len(requests)


class RemoveNodeMidEpisode(Guess50):
    """Guess50 that removes `worker`'s node the first time an episode's last step ran there (every episode then
    has steps to go), and answers once the node's env processes are dead: an episode whose env was there cannot
    finish on a node on its way out, however slowly the machine runs."""

    def __init__(self, cluster, worker):
        self.cluster, self.worker, self.removed = cluster, worker, False

    def act(self, requests):
        if not self.removed:
            seen = [LOCATION.search(r.messages[-1]["content"]) for r in requests]
            pids = {int(m.group(2)) for m in seen if m and m.group(1) == self.worker.node_id}
            if pids:
                self.cluster.remove_node(self.worker, False)
                self.removed = True
                deadline = time.monotonic() + 60
                while any(alive(pid) for pid in pids):
                    assert time.monotonic() < deadline, f"the removed node's env processes {pids} still run"
                    time.sleep(0.1)
        return super().act(requests)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def locations(episode) -> list[tuple[str, str, str]]:
    """(node, pid, env) of every step of `episode` (what each step returned: the next turn's observation)."""
    seen = [turn.observation for turn in episode.turns[1:]] + [episode.final_observation]
    return [LOCATION.search(text).groups() for text in seen]


@ray.remote(num_cpus=0)
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def wait_until_spread_reaches(node_id: str, seconds: float = 60) -> None:
    """Wait until an actor can be placed on `node_id`: the schedulers learn of a new node a while after it
    registers (within the syncer's 100 ms period on a quiet machine, seconds on a loaded one)."""
    deadline = time.monotonic() + seconds
    while True:
        actors = [Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True)).remote()
                  for _ in range(2)]
        placed = set(ray.get([a.node.remote() for a in actors]))
        for actor in actors:
            ray.kill(actor)
        if node_id in placed:
            return
        assert time.monotonic() < deadline, f"no actor could be placed on the second node in {seconds} s: " \
                                            f"{ray.available_resources()}"
        time.sleep(0.2)


@pytest.fixture
def two_node_cluster():
    ray.shutdown()  # a local Ray that an earlier test's EnvPool started in this process (a no-op if none)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    tests = str(Path(__file__).parent)
    try:  # the cluster goes, and with it the address file it wrote in /tmp/ray, whatever fails below
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}})
        wait_until_spread_reaches(worker.node_id)
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_env_actors_spread_over_nodes_and_a_lost_node_costs_only_retried_episodes(two_node_cluster):
    cluster, worker = two_node_cluster
    worker_node = worker.node_id
    with EnvPool("cluster/WhereAmI-v0", 4, backend="ray", step_timeout=30) as pool:
        both = collect_groups("cluster/WhereAmI-v0", Guess50(), n_groups=2, group_size=2, pool=pool, seed=1)
        nodes = {node for g in both.groups for e in g.episodes for node, _, _ in locations(e)}
        assert len(nodes) == 2 and worker_node in nodes  # the actors run on both nodes
        assert both.metrics["failed_attempts"] == 0

        remover = RemoveNodeMidEpisode(cluster, worker)
        started = time.monotonic()
        # 3 retries: an actor restarted just as the node goes may still be placed on it, and die once more
        result = collect_groups("cluster/WhereAmI-v0", remover, n_groups=2, group_size=2, pool=pool, seed=2,
                                retries=3)
    assert remover.removed
    assert time.monotonic() - started < 120
    assert result.metrics["dropped_groups"] == 0 and len(result.groups) == 2
    assert result.metrics["retries"] >= 1  # the episodes that were on the lost node, played again
    assert all(re.search(r"actor died|timed out", f.cause) for f in result.failures), result.failures
    for group in result.groups:
        for episode in group.episodes:
            where = set(locations(episode))
            assert len(where) == 1, f"an episode's turns come from several envs: {where}"  # never spliced
            (node, _, _), = where
            # started after the removal, or retried on the surviving node (or over in one turn before it)
            assert node != worker_node or len(episode.turns) == 1
