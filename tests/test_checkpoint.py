"""Checkpoints are atomic and a run killed with SIGKILL resumes to exactly the run that was never killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from envgym.trainers import Trainer, config_from_dict
from envgym.trainers.checkpoint import latest_checkpoint, save_checkpoint

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
