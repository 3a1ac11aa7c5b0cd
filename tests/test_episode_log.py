"""Episodes kept by a training run: which iterations, what each turn carries, failures, and the on-disk layout."""

import gymnasium
import pytest

import envgym
from envgym import registration
from envgym.trainers import ConfigError, Trainer, config_from_dict
from envgym.trainers.advantages import compute_advantages
from envgym.trainers.batch import RolloutBatch
from envgym.run_files import read_samples, sample_path, write_sample
from envgym.trainers.episode_log import is_due
from envgym.models import load_model

MICRO = {"iterations": 3, "threads": 1,
         "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
         "rollout": {"n_groups": 3, "group_size": 3, "max_new_tokens": 2, "context": "window", "window": 0},
         "optim": {"epochs": 1, "micro_batch_tokens": 1024, "lr": 1e-2}, "eval": {"every": 3, "episodes": 2},
         "checkpoint": {"every": 3}, "log_episodes": {"every": 2, "groups": 2}}


def micro(tmp_path, overrides=()):
    return config_from_dict({**MICRO, "out_dir": str(tmp_path / "run")}, overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-iteration run storing 2 of 3 groups on iterations 1, 2 and 3 (the first, every 2nd, the last)."""
    tmp_path = tmp_path_factory.mktemp("episode_log")
    Trainer(micro(tmp_path)).fit()
    return tmp_path / "run"


def test_samples_are_kept_on_the_first_every_nth_and_last_iteration():
    config = config_from_dict({"iterations": 12, "log_episodes": {"every": 5, "groups": 1}})
    assert [i for i in range(1, 13) if is_due(config, i)] == [1, 5, 10, 12]
    for off in ({"every": 0, "groups": 4}, {"every": 3, "groups": 0}):
        assert not any(is_due(config_from_dict({"iterations": 6, "log_episodes": off}), i) for i in range(1, 7))


def test_a_run_stores_annotated_groups_the_trainer_actually_used(run):
    samples = read_samples(run)
    assert [s.iteration for s in samples] == [1, 2, 3]
    _, tokenizer = load_model("tiny-maze", seed=0)
    for sample in samples:
        assert len(sample.groups) == 2 and sample.groups_collected == 3 and sample.failures == []
        assert sample_path(run, sample.iteration).with_suffix(".json").exists()
        # the stored advantages are the estimator's on these groups (GiGPO is group-local, so a subset reproduces)
        expected = compute_advantages(RolloutBatch.from_groups(sample.groups).turns, "gigpo").tolist()
        turns = [t for g in sample.groups for e in g.episodes for t in e.turns]
        assert [t.annotations["advantage"] for t in turns] == pytest.approx(expected, abs=1e-5)
        for group in sample.groups:
            assert group.env_id == "games/Maze-v0"
            sizes = [[t.annotations["anchor_size"] for t in e.turns] for e in group.episodes]
            assert sizes == group.anchor_sizes()
        for t in turns:
            notes = t.annotations
            assert len(notes["new_logprobs"]) == len(t.logprobs) == len(t.action_ids) > 0
            assert notes["obs_tokens"] == [tokenizer.decode([i]) for i in t.obs_ids]
            assert notes["action_tokens"] == [tokenizer.decode([i]) for i in t.action_ids]
            assert "intrinsic" not in notes  # no turn-reward model in this run
    # lr 1e-2 moved the policy: the new logprobs are those after the update, not a copy of the behaviour ones
    drift = [abs(a - b) for s in samples for g in s.groups for e in g.episodes for t in e.turns
             for a, b in zip(t.annotations["new_logprobs"], t.logprobs)]
    assert max(drift) > 1e-4


def test_without_an_update_the_new_logprobs_equal_the_behaviour_logprobs(tmp_path):
    trainer = Trainer(micro(tmp_path, ["optim.lr=0.0", "iterations=1"]))
    trainer.train_iteration()
    (sample,) = read_samples(tmp_path / "run")
    for turn in (t for g in sample.groups for e in g.episodes for t in e.turns):
        assert turn.annotations["new_logprobs"] == pytest.approx(list(turn.logprobs), abs=1e-4)


def test_parquet_samples_and_turned_off_logging(tmp_path):
    Trainer(micro(tmp_path, ["iterations=1", "log_episodes.format=parquet"])).train_iteration()
    (sample,) = read_samples(tmp_path / "run")
    assert sample_path(tmp_path / "run", 1, "parquet").exists()
    assert all(isinstance(t.annotations["advantage"], float) for g in sample.groups for e in g.episodes
               for t in e.turns)
    off = tmp_path / "off"
    Trainer(config_from_dict({**MICRO, "out_dir": str(off)}, ["log_episodes.every=0"])).train_iteration()
    assert not (off / "episodes").exists() and read_samples(off) == []


@pytest.fixture
def failing_env():
    envgym.register("faulty/TrainFailOnSeed-v0", "faulty_envs:FailOnSeed", max_turns=3)
    yield "faulty/TrainFailOnSeed-v0"
    registration._registry.pop("faulty/TrainFailOnSeed-v0", None)
    gymnasium.registry.pop("faulty/TrainFailOnSeed-v0", None)


def test_failed_episodes_are_stored_with_their_cause(tmp_path, failing_env):
    config = micro(tmp_path, [f"env.id={failing_env}", "env.kwargs={high: 16}", "env.show_admissible=false",
                              "model.name=tiny-guess", "rollout.n_groups=6", "log_episodes.groups=6", "iterations=1"])
    Trainer(config).train_iteration()
    (sample,) = read_samples(tmp_path / "run")
    assert sample.failures, "some of the 6 group seeds are odd, and FailOnSeed cannot reset from an odd seed"
    assert all("cannot start from seed" in f["cause"] for f in sample.failures)
    assert sample.groups_collected == len(sample.groups) == 6 - len({f["group"] for f in sample.failures})
    assert {f["seed"] for f in sample.failures}.isdisjoint(g.seed for g in sample.groups)
    assert all(f["seed"] % 2 == 1 for f in sample.failures)


def test_write_sample_round_trips_failures(tmp_path):
    failures = [{"group": 1, "member": 0, "attempt": 2, "seed": 7, "cause": "step 3: boom"}]
    write_sample(tmp_path, 4, [], failures=failures, groups_collected=5)
    (sample,) = read_samples(tmp_path)
    assert (sample.iteration, sample.groups, sample.failures, sample.groups_collected) == (4, [], failures, 5)


def test_negative_log_episodes_options_are_rejected():
    for key in ("every", "groups"):
        with pytest.raises(ConfigError, match=f"log_episodes.{key} must be >= 0"):
            config_from_dict({"log_episodes": {key: -1}})
    with pytest.raises(ConfigError, match="log_episodes.format must be one of"):
        config_from_dict({"log_episodes": {"format": "csv"}})


def test_disk_use_per_sample_is_small(run):
    """The documented bound: a sample of 2 groups of 3 short maze episodes is tens of kB, not MB."""
    sizes = [p.stat().st_size for p in (run / "episodes").iterdir()]
    assert len(sizes) == 6 and max(sizes) < 200_000
