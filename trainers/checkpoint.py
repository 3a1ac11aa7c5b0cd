"""Atomic checkpoints of a training run, and finding the one to resume from.

A checkpoint is a directory `OUT/checkpoints/iter_NNNNNN/` holding the model
(or only the LoRA adapter) and tokenizer as `save_pretrained` writes them,
`trainer_state.pt` (optimizer and any extra module states, the iteration, the
python / numpy / torch RNG states) and `config.yaml`. It is written to a
hidden temporary directory and renamed into place, so a run killed at any
moment leaves either a complete checkpoint or none; leftovers of a killed
write are removed on the next save.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
#: Config sections and keys that may differ between a checkpoint and the run resuming from it.
RESUMABLE_CHANGES = ("iterations", "out_dir", "threads", "eval", "checkpoint", "distributed", "ray")
#: The checkpoint of iteration 0 (the policy RL starts from, after any warm start) is kept: it is the KL reference.
RL_START = "iter_000000"


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a run with a different config."""


def rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def checkpoints_dir(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir: str | os.PathLike[str], iteration: int, *, model: Any, tokenizer: Any,
                    config: dict[str, Any], state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `iteration` atomically and keep the newest `keep` (and RL_START); returns its directory.

    `state` holds picklable training state (optimizer state dicts, counters);
    the iteration and the RNG states are added here.
    """
    root = checkpoints_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"iter_{iteration:06d}"
    staging = root / f".tmp-iter_{iteration:06d}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    torch.save({**state, "iteration": iteration, "rng": rng_states()}, staging / STATE_FILE)
    (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if final.exists():  # re-saving an iteration (e.g. after a resume) replaces it
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in [p for p in sorted(root.glob("iter_*")) if p.name != RL_START][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    done = sorted(p for p in checkpoints_dir(out_dir).glob("iter_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, weights_only=False)


def check_config_matches(checkpoint: Path, config: dict[str, Any]) -> None:
    """Raise CheckpointMismatch listing each setting where `config` differs from the checkpoint's."""
    saved = yaml.safe_load((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    differences = [f"{key}: checkpoint has {old!r}, this config has {new!r}"
                   for key, old, new in _diff(saved, config) if key.split(".")[0] not in RESUMABLE_CHANGES]
    if differences:
        raise CheckpointMismatch(
            f"cannot resume from {checkpoint}: it was written with a different config\n  " + "\n  ".join(differences)
            + "\nresume with the checkpoint's config (its config.yaml), or start a fresh run in a new out_dir")


def _diff(old: Any, new: Any, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    elif old != new:
        yield prefix, old, new


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as the plain YAML-able dict stored in checkpoints."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config)))
