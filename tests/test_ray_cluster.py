"""The Ray env pool on a local two-node Ray cluster (Ray's own `ray.cluster_utils.Cluster`).

Env actors spread over the nodes; removing a node while its envs are mid-episode
costs only retries of those episodes (the rollout's failure policy), and no
episode carries turns of an env that died.
"""

import os
import re
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

import cluster_envs  # noqa: E402,F401  (registers cluster/WhereAmI-v0)
from envgym.pool import EnvPool  # noqa: E402
from envgym.rollout import collect_groups  # noqa: E402

LOCATION = re.compile(r"\[node (\S+) pid (\d+) env (\d+)\]")


class Guess50:
    """A text policy that always answers 50 (the env ignores what it is told, bar the reward)."""

    def act(self, requests):
        return ["50"] * len(requests)


def locations(episode) -> list[tuple[str, str, str]]:
    """(node, pid, env) of every step of `episode` (what each step returned: the next turn's observation)."""
    seen = [turn.observation for turn in episode.turns[1:]] + [episode.final_observation]
    return [LOCATION.search(text).groups() for text in seen]


@pytest.fixture
def two_node_cluster():
    ray.shutdown()  # a local Ray that an earlier test's EnvPool started in this process (a no-op if none)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    tests = str(Path(__file__).parent)
    try:  # the cluster goes, and with it the address file it wrote in /tmp/ray, whatever fails below
        worker = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}})
        # the schedulers learn of the second node a little after it registers: until then SPREAD has one node
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, f"the second node did not join in 60 s: {ray.available_resources()}"
            time.sleep(0.1)
        time.sleep(1)  # the raylets' resource views follow the GCS's within the syncer's period (100 ms)
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

        removal = threading.Timer(0.5, cluster.remove_node, args=(worker, False))  # mid-episode: steps take 0.3 s
        removal.start()
        started = time.monotonic()
        # 3 retries: an actor restarted just as the node goes may still be placed on it, and die once more
        result = collect_groups("cluster/WhereAmI-v0", Guess50(), n_groups=2, group_size=2, pool=pool, seed=2,
                                retries=3)
        removal.join()
    assert time.monotonic() - started < 120
    assert result.metrics["dropped_groups"] == 0 and len(result.groups) == 2
    assert result.metrics["retries"] >= 1  # the episodes that were on the lost node, played again
    assert all(re.search(r"actor died|timed out", f.cause) for f in result.failures), result.failures
    for group in result.groups:
        for episode in group.episodes:
            where = set(locations(episode))
            assert len(where) == 1, f"an episode's turns come from several envs: {where}"  # never spliced
            (node, _, _), = where
            assert node != worker_node  # started after the removal, or retried on the surviving node
