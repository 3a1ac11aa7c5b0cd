"""A run owns its out_dir: one run at a time, no fresh run over an old one, and a save never touches another's files."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from envgym.cli import EXIT_FAILED, EXIT_USAGE, main
from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.config import TrainConfig
from envgym.trainers.checkpoint import CheckpointMismatch, check_config_matches, config_dict, save_checkpoint
from envgym.trainers.run_dir import OutDirHoldsRun, OutDirInUse, RunDirectory

RUN = {"iterations": 1, "threads": 1,
       "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
       "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0},
       "optim": {"epochs": 1, "micro_batch_tokens": 1024}, "eval": {"every": 1, "episodes": 2},
       "checkpoint": {"every": 1}}

HOLD = textwrap.dedent("""
    import sys
    from envgym.trainers.run_dir import RunDirectory
    run = RunDirectory.claim(sys.argv[1])
    print("claimed", flush=True)
    sys.stdin.read()  # hold the directory until the test closes our stdin
""")


@pytest.fixture
def held(tmp_path):
    """`tmp_path/run`, claimed by another process for the duration of the test; yields (path, that process)."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline()
    assert line == "claimed\n", holder.stderr.read()
    yield out, holder
    holder.stdin.close()
    holder.wait(timeout=30)


def recipe(tmp_path, out, **changes):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**RUN, "out_dir": str(out), **changes}))
    return str(path)


def test_a_second_run_is_refused_naming_the_holder(held, tmp_path, capsys):
    out, holder = held
    with pytest.raises(OutDirInUse, match=f"in use by another run \\(pid {holder.pid} on host "):
        RunDirectory.claim(out)
    assert main(["train", recipe(tmp_path, out)]) == EXIT_FAILED
    message = capsys.readouterr().out
    assert f"pid {holder.pid}" in message and "started" in message and "-c" in message
    assert not (out / "metrics.jsonl").exists()  # the refused run wrote nothing


def test_the_lock_is_released_when_its_holder_dies(held):
    out, holder = held
    holder.kill()
    holder.wait()
    RunDirectory.claim(out).release()


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(config_from_dict({**RUN, "out_dir": str(out)})).fit()
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(OutDirHoldsRun, match="already holds a run .*metrics.jsonl.*--resume.*--overwrite"):
        Trainer(config_from_dict({**RUN, "out_dir": str(out), "seed": 1}))
    assert main(["train", recipe(tmp_path, out, seed=1)]) == EXIT_USAGE
    assert "already holds a run" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == before  # the old run is untouched


def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "iter_000003").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    (out / "episodes").mkdir()
    for name in ("metrics.jsonl", "learning_curve.png", "nan_batch_iter000002.pt"):
        (out / name).write_text("old")
    (out / "sft").mkdir()
    (out / "sft" / "config.json").write_text("{}")  # a warm start RL may start from
    (out / "notes.txt").write_text("mine")
    with RunDirectory.claim(out, overwrite=True) as run:
        assert run.run_files() == ["checkpoints/", "metrics.jsonl", "tensorboard/", "learning_curve.png",
                                   "nan_batch_iter000002.pt", "episodes/"]
        run.clear_run()
        assert run.run_files() == []
    assert sorted(p.name for p in out.iterdir()) == [".envgym.lock", "notes.txt", "sft"]


def test_overwrite_starts_a_new_run_after_its_set_up_succeeded(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "iter_000007").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"iteration": 7}\n')
    with pytest.raises(Exception, match="did you mean"):  # a bad config deletes nothing
        Trainer(config_from_dict({**RUN, "out_dir": str(out), "env": {**RUN["env"], "id": "games/Mazee-v0"}}),
                overwrite=True)
    assert (out / "checkpoints" / "iter_000007").exists()
    history = Trainer(config_from_dict({**RUN, "out_dir": str(out)}), overwrite=True).fit()
    assert [m["iteration"] for m in history] == [0, 1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_000001"]


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(ValueError, match="exclude each other"):
        RunDirectory.claim(tmp_path, resume=True, overwrite=True)
    with pytest.raises(SystemExit):
        main(["train", recipe(tmp_path, tmp_path / "run"), "--resume", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_process_may_claim_its_own_directory_again(tmp_path):
    def claim_elsewhere():
        return subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True,
                              timeout=60, input="")

    first = RunDirectory.claim(tmp_path)
    second = RunDirectory.claim(tmp_path)
    second.release()
    refused = claim_elsewhere()  # still held by `first`: another process is refused
    assert refused.returncode != 0 and f"pid {os.getpid()}" in refused.stderr
    first.release()
    assert claim_elsewhere().returncode == 0


def test_an_unwritable_out_dir_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", recipe(tmp_path, blocker / "run")]) == EXIT_USAGE
    assert f"out_dir {blocker / 'run'} cannot be written" in capsys.readouterr().out


class _Writes:
    """A model or tokenizer whose save_pretrained writes one small file (and records where)."""

    def __init__(self, name, staged=None):
        self.name, self.staged = name, staged

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        (path / self.name).write_text(self.name)
        if self.staged is not None:
            self.staged.append(path)


def save(out, iteration, run_id, keep=2, staged=None):
    return save_checkpoint(out, iteration, model=_Writes("model.bin", staged), tokenizer=_Writes("tokenizer.json"),
                           config={"iterations": 9}, state={}, keep=keep, run_id=run_id)


def test_staging_directories_are_unique_and_a_save_leaves_others_alone(tmp_path):
    staged = []
    save(tmp_path, 5, "a", staged=staged)
    save(tmp_path, 5, "a", staged=staged)
    assert staged[0] != staged[1] and staged[0].name.startswith(".tmp-iter_000005")
    in_flight = tmp_path / "checkpoints" / ".tmp-iter_000006-1234abcd"  # another writer's save, under way
    in_flight.mkdir()
    save(tmp_path, 6, "a")
    assert in_flight.exists()
    with RunDirectory.claim(tmp_path, resume=True):  # a new owner of the directory removes leftovers
        assert not in_flight.exists()


def test_pruning_touches_only_this_runs_checkpoints(tmp_path):
    for iteration in (1, 2, 3):
        save(tmp_path, iteration, "other")
    for iteration in (4, 5, 6):
        save(tmp_path, iteration, "mine", keep=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("iter_*"))
    assert names == ["iter_000002", "iter_000003", "iter_000006"]  # "other" pruned itself to 2; "mine" to 1


def _checkpoint_with(tmp_path, config):
    checkpoint = save(tmp_path, 3, "r")
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config_dict(config)))
    return checkpoint


def test_resume_accepts_only_resumable_changes_and_growing_iterations(tmp_path):
    original = config_from_dict({**RUN, "iterations": 10, "out_dir": str(tmp_path)})
    checkpoint = _checkpoint_with(tmp_path, original)
    for fine in (["iterations=20"], ["threads=2", "checkpoint.keep=5", "eval.every=3", "out_dir=elsewhere"]):
        check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 10}, fine)))
    with pytest.raises(CheckpointMismatch, match=r"iterations: the checkpoint's run was set to 10, this config has 5 "
                                                 r"\(iterations may only grow on resume\)"):
        check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 5})))
    with pytest.raises(CheckpointMismatch, match="eval.episodes: checkpoint has 2, this config has 50"):
        check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 10},
                                                                      ["eval.episodes=50"])))


def test_resume_accepts_a_checkpoint_older_than_a_setting_that_keeps_its_default(tmp_path):
    # a run written before optim.skip_zero_advantage existed trained as its default (False) does
    older = config_dict(config_from_dict({**RUN, "iterations": 10}))
    del older["optim"]["skip_zero_advantage"]
    checkpoint = save(tmp_path, 3, "r")
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(older))
    defaults = config_dict(TrainConfig())
    check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 20})), defaults=defaults)
    with pytest.raises(CheckpointMismatch, match=r"optim.skip_zero_advantage: checkpoint has no such setting "
                                                 r"\(an older envgym wrote it\), this config has True"):
        check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 20},
                                                                      ["optim.skip_zero_advantage=true"])),
                             defaults=defaults)
    with pytest.raises(CheckpointMismatch, match="checkpoint has no such setting"):  # no defaults: nothing assumed
        check_config_matches(checkpoint, config_dict(config_from_dict({**RUN, "iterations": 20})))


def test_a_run_that_fails_its_set_up_leaves_no_new_directory(tmp_path):
    from envgym.trainers import ConfigError

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="size must be >= 2"):
        Trainer(config_from_dict({**RUN, "out_dir": str(out), "env": {**RUN["env"], "kwargs": {"size": 1}}}))
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        Trainer(config_from_dict({**RUN, "out_dir": str(kept), "env": {**RUN["env"], "kwargs": {"size": 1}}}))
    assert sorted(p.name for p in kept.iterdir()) == [".envgym.lock", "notes.txt"]  # a user's directory stays
