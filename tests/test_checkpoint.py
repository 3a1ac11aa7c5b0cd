"""Checkpoints are atomic and verified; a run killed with SIGKILL resumes to exactly the run never killed; a damaged
checkpoint is skipped for the newest intact one, and a full disk is reported as such."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from envgym.cli import EXIT_FAILED, main
from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.checkpoint import CheckpointWriteError, latest_checkpoint, save_checkpoint, verify_checkpoint

RUN = {"iterations": 4, "threads": 1, "seed": 3,
       "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 4, "show_admissible": True},
       "rollout": {"n_groups": 3, "group_size": 3, "max_new_tokens": 2, "context": "window", "window": 0},
       "optim": {"epochs": 1, "micro_batch_tokens": 2048, "lr": 1e-3}, "eval": {"every": 2, "episodes": 6},
       "checkpoint": {"every": 1, "keep": 10}}
TIMING = ("time/", "perf/")


def deterministic(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING) and k != "sft/seconds"}


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_interrupted_save_leaves_no_checkpoint(tmp_path):
    class Exploding:
        def save_pretrained(self, path):
            os.makedirs(path)
            (path / "half_written").write_text("x")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 1, model=Exploding(), tokenizer=None, config={}, state={})
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.slow
def test_sigkill_mid_iteration_then_resume_matches_the_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    Trainer(config_from_dict({**RUN, "out_dir": str(straight)})).fit()

    killed = tmp_path / "killed"
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({**RUN, "out_dir": str(killed)}))
    command = [sys.executable, "-m", "envgym.cli", "train", str(recipe)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill as soon as iteration 2 is logged: iteration 3 is under way
        if (killed / "metrics.jsonl").exists() and any(m["iteration"] == 2 for m in read_metrics(killed)):
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(killed).name in ("iter_000002", "iter_000003")

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = read_metrics(straight), read_metrics(killed)
    assert [m["iteration"] for m in got] == [0, 1, 2, 3, 4]
    assert [deterministic(m) for m in got] == [deterministic(m) for m in expected]
    final_straight = load_file(latest_checkpoint(straight) / "model.safetensors")
    final_killed = load_file(latest_checkpoint(killed) / "model.safetensors")
    assert all((final_straight[k] == final_killed[k]).all() for k in final_straight)


# -- verified checkpoints ---------------------------------------------------------------------------------

SMALL = {"iterations": 2, "threads": 1, "seed": 1,
         "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
         "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0},
         "optim": {"epochs": 1, "micro_batch_tokens": 1024}, "eval": {"every": 2, "episodes": 2},
         "checkpoint": {"every": 1, "keep": 10}}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-iteration run with checkpoints 1 and 2 (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(config_from_dict({**SMALL, "out_dir": str(out)})).fit()
    return out


def copy_of(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage, reason", [
    ("trainer_state.pt", truncate, r"trainer_state.pt is truncated \(\d+ of \d+ bytes\)"),
    ("model.safetensors", truncate, r"model.safetensors is truncated"),
    ("config.yaml", truncate, r"config.yaml is truncated"),
    ("model.safetensors", flip_a_byte, r"model.safetensors is damaged \(its SHA-256 differs"),
])
def test_resume_skips_a_damaged_checkpoint_and_says_why(finished_run, tmp_path, caplog, name, damage, reason):
    run = copy_of(finished_run, tmp_path)
    damage(run / "checkpoints" / "iter_000002" / name)
    config = config_from_dict({**SMALL, "out_dir": str(run)})
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config, resume=True)
    assert trainer.iteration == 1
    assert re.search(r"skipping checkpoint \S+iter_000002: " + reason, caplog.text), caplog.text
    assert "resuming from " + str(run / "checkpoints" / "iter_000001") in caplog.text
    history = trainer.fit()
    assert [m["iteration"] for m in history] == [0, 1, 2]
    assert verify_checkpoint(run / "checkpoints" / "iter_000002") is None  # written again, whole


def test_resume_without_an_intact_checkpoint_fails_naming_each_fault(finished_run, tmp_path, capsys):
    run = copy_of(finished_run, tmp_path)
    truncate(run / "checkpoints" / "iter_000002" / "trainer_state.pt")
    (run / "checkpoints" / "iter_000001" / "manifest.json").unlink()
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump({**SMALL, "out_dir": str(run)}))
    assert main(["train", str(recipe), "--resume"]) == EXIT_FAILED
    message = capsys.readouterr().out
    assert "no intact checkpoint" in message and "iter_000002: trainer_state.pt is truncated" in message
    assert "iter_000001: it has no readable manifest.json" in message and "--overwrite" in message


def test_every_file_is_in_the_manifest_which_is_written_last(finished_run):
    checkpoint = finished_run / "checkpoints" / "iter_000002"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    files = {p.name for p in checkpoint.iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files and {"trainer_state.pt", "model.safetensors", "config.yaml"} <= files
    assert all((checkpoint / n).stat().st_mtime_ns <= (checkpoint / "manifest.json").stat().st_mtime_ns
               for n in files)
    assert manifest["iteration"] == 2 and manifest["run_id"]


def test_a_checkpoint_loads_as_a_model_and_as_a_policy(finished_run):
    import torch

    from envgym.models import load_model
    from envgym.policies import HFPolicy, load_policy

    checkpoint = latest_checkpoint(finished_run)
    model, tokenizer = load_model(str(checkpoint), dtype="float32")
    trained = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in trained.items())
    policy = load_policy(f"hf:{checkpoint}")
    assert isinstance(policy, HFPolicy) and policy.tokenizer.get_vocab() == tokenizer.get_vocab()


class _Saves:
    def __init__(self, fail_with=None):
        self.fail_with = fail_with

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        (path / "weights.bin").write_bytes(b"w" * 100)
        if self.fail_with is not None:
            raise self.fail_with


def test_a_full_disk_names_the_checkpoint_and_the_intact_previous_one(tmp_path):
    save_checkpoint(tmp_path, 1, model=_Saves(), tokenizer=_Saves(), config={}, state={}, run_id="r")
    full = OSError(errno.ENOSPC, "No space left on device")  # injected at a write call
    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint(tmp_path, 2, model=_Saves(), tokenizer=_Saves(full), config={}, state={}, run_id="r")
    assert str(raised.value).startswith(
        f"no space left on device while writing checkpoint 2 to {tmp_path / 'checkpoints'}; "
        f"the previous checkpoint 1 is intact ({tmp_path / 'checkpoints' / 'iter_000001'})")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iter_000001"]  # no half-written staging


FILL_THE_DISK = """
import json, sys, torch
from envgym.trainers.checkpoint import CheckpointWriteError, save_checkpoint, verify_checkpoint
from envgym.models import load_model

out, padding = sys.argv[1], int(sys.argv[2])
model, tokenizer = load_model("tiny-maze", seed=0)
for iteration in range(1, 10):
    try:
        save_checkpoint(out, iteration, model=model, tokenizer=tokenizer, config={"iterations": 9},
                        state={"padding": torch.zeros(padding)}, keep=10, run_id="r")
    except CheckpointWriteError as exc:
        cause, chain = exc.__cause__, []
        while cause is not None:
            chain.append(type(cause).__name__)
            cause = cause.__context__
        from pathlib import Path
        left = sorted(p.name for p in (Path(out) / "checkpoints").iterdir())
        print(json.dumps({"message": str(exc), "chain": chain, "left": left,
                          "intact": [verify_checkpoint(Path(out) / "checkpoints" / n) is None for n in left]}))
        break
"""


@pytest.mark.slow
@pytest.mark.parametrize("padding, failing_writer", [(0, "SafetensorError"), (150_000, "OSError")])
def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path, padding, failing_writer):
    """A 5.2 MB tmpfs (bubblewrap, no root needed) fills up at the third tiny checkpoint: in the model's
    safetensors file without padding, in trainer_state.pt (torch.save) with 0.6 MB of padded state."""
    small = tmp_path / "small"
    small.mkdir()
    bwrap = shutil.which("bwrap")
    probe = bwrap and subprocess.run([bwrap, "--dev-bind", "/", "/", "--size", "5200000", "--tmpfs", str(small),
                                      "true"], capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("needs bubblewrap able to mount a private tmpfs")
    result = subprocess.run([bwrap, "--dev-bind", "/", "/", "--size", "5200000", "--tmpfs", str(small),
                             sys.executable, "-c", FILL_THE_DISK, str(small), str(padding)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    failed = int(report["message"].split("writing checkpoint ")[1].split()[0])
    assert failed >= 2 and report["message"].startswith(
        f"no space left on device while writing checkpoint {failed} to {small / 'checkpoints'}; "
        f"the previous checkpoint {failed - 1} is intact")
    assert failing_writer in report["chain"]
    assert report["left"] == [f"iter_{i:06d}" for i in range(1, failed)] and all(report["intact"])
