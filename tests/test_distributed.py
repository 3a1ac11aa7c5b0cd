"""Data-parallel training on CPU: 2 gloo ranks under torchrun train as one process would, stop together, resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distributed_update import VARIANTS, fixed_groups, one_update
from envgym.cli import main as envgym_main

TESTS = Path(__file__).parent
QUICKSTART = TESTS.parent / "trainers" / "recipes" / "quickstart.yaml"


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    # --standalone: a rendezvous on a free local port, so concurrent runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def run_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "COLUMNS": "400"}  # rich wraps at 80 columns without a terminal


def effective_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The matrices the policy computes with: a LoRA layer's base weight plus scale * B @ A, other tensors as they are.

    A LoRA adapter's B starts at zero, so B's own relative difference after two Adam steps would compare
    rounding with the size of those two steps rather than with the weights.
    """
    merged = {}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        if name.endswith(".base_layer.weight"):
            prefix = name.removesuffix("base_layer.weight")
            a, b = state[prefix + "lora_A.default.weight"], state[prefix + "lora_B.default.weight"]
            value = value + (16 / a.shape[0]) * b @ a  # lora.alpha 16 / lora.r
        merged[name] = value
    return merged


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], norm: str = "max") -> float:
    """max over tensors of |a - b| / |b|, with |.| the largest entry ("max") or the Frobenius norm ("fro")."""
    assert a.keys() == b.keys()
    size = (lambda t: t.abs().max()) if norm == "max" else torch.linalg.vector_norm
    return max(float(size(a[k].float() - b[k].float()) / size(b[k].float()).clamp_min(1e-12)) for k in a)


def well_conditioned(weights: dict[str, torch.Tensor], gradient: dict[str, torch.Tensor],
                     floor: float = 1e-4) -> dict[str, torch.Tensor]:
    """`weights` with the entries whose gradient (the one process's) is below `floor` of its tensor's largest zeroed.

    Adam's first step is about lr * g / (|g| + eps): the same for every entry well above eps, but where |g| is
    down at the float32 rounding of the ranks' sums (~1e-7 of the largest entry: the softmax tail of tokens
    never sampled) that rounding decides the step. Those entries are checked through the gradient, entry by
    entry; the weights are compared on the rest. Tensors without a gradient of their shape are kept whole.
    """
    kept, entries, compared = {}, 0, 0
    for name, value in weights.items():
        g = gradient.get(name, gradient.get(f"model.{name}"))  # the trained module holds the policy's as .model
        entries += value.numel()
        if g is None or g.shape != value.shape:
            kept[name] = value
            compared += value.numel()
            continue
        mask = g.abs() >= floor * g.abs().max()
        kept[name] = torch.where(mask, value, torch.zeros_like(value))
        compared += int(mask.sum())
    assert compared > 0.5 * entries, (f"only {compared} of {entries} weights have a gradient above {floor} "
                                      "of the largest")
    return kept


@pytest.mark.slow
def test_one_update_split_over_two_ranks_gives_the_weights_of_one_process_on_the_whole_batch(tmp_path):
    groups_file = tmp_path / "groups.pt"
    groups = fixed_groups(str(tmp_path / "collect"))
    torch.save(groups, groups_file)
    (tmp_path / "two").mkdir()
    proc = subprocess.run(torchrun(str(TESTS / "distributed_update.py"), str(groups_file), str(tmp_path / "two"),
                                   *VARIANTS), env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in VARIANTS:
        one = one_update(variant, groups, str(tmp_path / "one"))
        two = torch.load(tmp_path / "two" / f"{variant}.pt", weights_only=False)
        assert (two["world_size"], two["strategy"]) == (2, variant.split("-")[0])
        assert max_rel_diff(one["gradient"], two["gradient"]) <= 1e-5, variant
        weights = effective_weights(two["model"])
        assert max_rel_diff(effective_weights(one["initial"]), weights, "fro") > 1e-3, f"{variant}: no update"
        # Adam divides each gradient entry by its magnitude plus eps (1e-8): on the few entries near eps (the
        # softmax tail of tokens never sampled) float32 rounding of the ranks' sums, ~1e-7 of the largest entry,
        # moves a weight by up to ~1e-5 of the tensor's largest (measured 2.4e-5 .. 1.1e-4, and 1.7e-5 in norm
        # over a whole tensor), so those entries are left to the gradient check above
        assert max_rel_diff(well_conditioned(effective_weights(one["model"]), one["gradient"]),
                            well_conditioned(weights, one["gradient"]), "fro") <= 1e-5, variant
        # Adam is blind to a wrongly scaled gradient; the loss and the gradient norm are not
        for key in ("loss/policy", "loss/kl", "loss/entropy", "loss/ratio", "loss/grad_norm", "loss/clip_fraction"):
            assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), (variant, key)
        if "prm" in one:
            assert max_rel_diff(one["prm"], two["prm"]) <= 1e-5, f"{variant}: the PRIME reward model"


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def rank_of(pid: int) -> int | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env[b"RANK"]) if b"RANK" in env else None


def rl_lines(out_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["phase"] == "rl"]


@pytest.mark.slow
def test_two_rank_training_counts_every_ranks_episodes_stops_when_a_rank_dies_and_resumes(tmp_path):
    out = tmp_path / "run"
    # strategy auto: FSDP2, with a warm start that every rank runs and rank 0's result trains on
    command = torchrun("-m", "envgym", "train", str(QUICKSTART), f"out_dir={out}", "iterations=4",
                       "rollout.n_groups=4", "rollout.group_size=4", "sft.steps=5", "sft.episodes=16",
                       "optim.minibatches=1", "eval.every=2", "eval.episodes=8", "checkpoint.every=1")
    proc = subprocess.Popen(command, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "iter_000002").exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint of iteration 2 within 300 s"
            time.sleep(0.1)
        rank1 = next(pid for pid in children(proc.pid) if rank_of(pid) == 1)
        os.kill(rank1, signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)  # rank 0 must not wait in a collective for the dead rank
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert re.search(r"Signal 9 \(SIGKILL\)|exitcode\s*:\s*-9", output), output[-3000:]
    killed_at = max(m["iteration"] for m in rl_lines(out))
    assert killed_at < 4

    resumed = subprocess.run(command + ["--resume"], env=run_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    lines = rl_lines(out)
    assert [m["iteration"] for m in lines] == [1, 2, 3, 4]  # each once: what the kill lost is redone
    assert all(m["train/episodes"] == 16 for m in lines)  # 4 groups of 4, two on each rank
    assert [m["eval/episodes"] for m in lines if "eval/episodes" in m] == [8, 8]
    assert resumed.stdout.count("held-out success (test split)") == 1  # rank 0 reports the run, once


def test_a_world_size_that_does_not_divide_the_groups_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    code = envgym_main(["train", str(QUICKSTART), f"out_dir={tmp_path}", "rollout.n_groups=4"])
    out = capsys.readouterr().out
    assert code == 2
    assert "rollout.n_groups is 4, which 3 ranks cannot split" in out and "multiple of 3" in out
    assert "(rank 0)" in out


def test_a_ray_address_that_does_not_answer_fails_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "envgym", "train", str(QUICKSTART), f"out_dir={tmp_path}",
                           "rollout.pool=ray", "ray.address=127.0.0.1:1"], env=run_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ray.address: Ray address '127.0.0.1:1'" in proc.stdout and "does not answer" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_checkpoint_of_fsdp_ranks_is_resumed_by_fsdp_ranks_only():
    from envgym.trainers.checkpoint import CheckpointMismatch
    from envgym.trainers.distributed import DataParallel

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointMismatch, match="written by a 'fsdp' run and this run is 'none'.*strategy: fsdp"):
        DataParallel().load_optimizer_state(optimizer, {"optimizer": {}, "data_parallel": {"strategy": "fsdp"}})
    DataParallel().load_optimizer_state(optimizer, {"optimizer": optimizer.state_dict(),
                                                    "data_parallel": {"strategy": "ddp"}})
