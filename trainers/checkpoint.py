"""Atomic, verified checkpoints of a training run, and finding the one to resume from.

A checkpoint is a directory `OUT/checkpoints/iter_NNNNNN/` holding the model
(or only the LoRA adapter) and tokenizer as `save_pretrained` writes them,
`trainer_state.pt` (optimizer and any extra module states, the iteration, the
python / numpy / torch RNG states), `config.yaml`, and `manifest.json`, written
last: the size and SHA-256 of every other file and the id of the run that
wrote it. The checkpoint is written to a staging directory unique to the save
and renamed into place, so a run killed at any moment leaves either a complete
checkpoint or none (`remove_unfinished` clears leftovers when a run claims the
directory). Loading verifies the manifest: a truncated or damaged checkpoint is
skipped, with the reason, in favour of the newest intact one. Pruning after a
save removes only older checkpoints of the same run.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from envgym.run_files import CHECKPOINTS_DIR

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
STAGING_PREFIX = ".tmp-"
#: Config keys (and sections) that may differ between a checkpoint and the run resuming from it: they change
#: neither what is trained nor what is measured (the pool's keys only where an env fails). `iterations` may
#: only grow (see `check_config_matches`).
RESUMABLE_CHANGES = ("iterations", "out_dir", "threads", "eval.every", "checkpoint.every", "checkpoint.keep",
                     "rollout.pool", "rollout.num_envs", "rollout.step_timeout", "rollout.episode_timeout",
                     "rollout.retries", "rollout.env_memory_mb", "log_episodes", "distributed.timeout_s",
                     "ray.address")
#: The checkpoint of iteration 0 (the policy RL starts from, after any warm start) is kept: it is the KL reference.
RL_START = "iter_000000"


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a run with a different config."""


class CheckpointCorrupt(OSError):
    """No intact checkpoint to load: each one found is truncated, damaged or incomplete (the message says how)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the newest intact one."""


def rng_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def checkpoints_dir(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR


def save_checkpoint(out_dir: str | os.PathLike[str], iteration: int, *, model: Any, tokenizer: Any,
                    config: dict[str, Any], state: dict[str, Any], keep: int = 2, run_id: str = "") -> Path:
    """Write checkpoint `iteration` atomically with its manifest, then prune; returns its directory.

    `state` holds picklable training state (optimizer state dicts, counters);
    the iteration and the RNG states are added here. Pruning keeps the newest
    `keep` checkpoints of run `run_id` up to `iteration` (and RL_START), and
    never touches another run's. A full disk raises CheckpointWriteError naming
    the newest intact checkpoint; nothing half-written is left behind.
    """
    root = checkpoints_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    staging = root / f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(staging / STATE_FILE, "wb") as f:  # a file object: a full disk then raises OSError, not a
            torch.save({**state, "iteration": iteration, "rng": rng_states()}, f)  # bare "unexpected pos"
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        _write_manifest(staging, {"run_id": run_id, "iteration": iteration})
        _move_into_place(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _disk_full(exc):
            previous = latest_checkpoint(out_dir)
            kept = (f"the previous checkpoint {_iteration(previous)} is intact ({previous})" if previous else
                    "no earlier checkpoint is intact")
            raise CheckpointWriteError(f"no space left on device while writing checkpoint {iteration} to {root}; "
                                       f"{kept}. Free space, then continue with --resume") from exc
        raise
    ours = [p for p in sorted(root.glob("iter_*")) if p.name != RL_START and _iteration(p) <= iteration
            and _manifest(p).get("run_id") == run_id]
    for old in ours[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_id_of(checkpoint: Path) -> str:
    """The id of the run that wrote `checkpoint` (from its manifest)."""
    return str(_manifest(checkpoint).get("run_id", ""))


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if every file of `checkpoint` matches its manifest; otherwise what is wrong, in words."""
    manifest = _manifest(checkpoint)
    if not manifest:
        return f"it has no readable {MANIFEST_FILE} (written by an older envgym, or damaged)"
    for name, expected in manifest.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size < expected["size"]:
            return f"{name} is truncated ({size} of {expected['size']} bytes)"
        if size != expected["size"]:
            return f"{name} has {size} bytes, its manifest says {expected['size']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} is damaged (its SHA-256 differs from the manifest's)"
    return None


def find_checkpoints(out_dir: str | os.PathLike[str]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint of `out_dir` (or None), and each newer one skipped with the reason."""
    skipped = []
    for checkpoint in sorted(checkpoints_dir(out_dir).glob("iter_*"), reverse=True):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append((checkpoint, problem))
    return None, skipped


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest intact checkpoint of a run, or None."""
    return find_checkpoints(out_dir)[0]


def verified(checkpoint: Path) -> Path:
    """`checkpoint`, after checking it against its manifest; raises CheckpointCorrupt saying what is wrong."""
    problem = verify_checkpoint(checkpoint)
    if problem is not None:
        raise CheckpointCorrupt(f"checkpoint {checkpoint} cannot be used: {problem}")
    return checkpoint


def checkpoint_to_resume(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest intact checkpoint, logging each newer one skipped and why; None if the run has none at all.

    Raises CheckpointCorrupt when checkpoints exist but none is intact.
    """
    found, skipped = find_checkpoints(out_dir)
    for checkpoint, problem in skipped:
        log.warning("--resume: skipping checkpoint %s: %s", checkpoint, problem)
    if found is None and skipped:
        raise CheckpointCorrupt(f"--resume: no intact checkpoint in {checkpoints_dir(out_dir)}: "
                                + "; ".join(f"{p.name}: {why}" for p, why in skipped)
                                + ". Start over with --overwrite, or in another out_dir")
    if found is not None and skipped:
        log.warning("--resume: resuming from %s, the newest intact checkpoint", found)
    return found


def remove_unfinished(out_dir: str | os.PathLike[str]) -> None:
    """Delete staging directories of saves that never finished (only safe while holding the run's lock)."""
    for stale in checkpoints_dir(out_dir).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _iteration(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("_", 1)[1])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(checkpoint: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _write_manifest(staging: Path, header: dict[str, Any]) -> None:
    """Sync every file of `staging` to disk, then record their sizes and checksums in the manifest, last."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[path.relative_to(staging).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    with open(staging / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump({**header, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename `staging` to `final`; an existing `final` (an iteration saved again after a resume) is replaced."""
    if final.exists():
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` or an exception it came from is 'no space left' (also inside safetensors' Rust errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if f"(os error {errno.ENOSPC})" in str(exc):  # Rust's io::Error, as safetensors reports it
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, weights_only=False)


def check_config_matches(checkpoint: Path, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Raise CheckpointMismatch listing each setting where `config` differs from the checkpoint's.

    Only RESUMABLE_CHANGES may differ, and `iterations` only upwards. A setting the checkpoint does not
    have (added to envgym after it was written) matches where `config` holds its value in `defaults`
    (the default config, as `config_dict` gives it): the run was trained with that behaviour.
    """
    saved = yaml.safe_load((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    differences = [f"{key}: checkpoint has {_shown(old)}, this config has {new!r}"
                   for key, old, new in _diff(saved, config) if not _resumable(key)
                   and not (old is _ABSENT and defaults is not None and new == _lookup(defaults, key))]
    if config["iterations"] < saved["iterations"]:
        differences.append(f"iterations: the checkpoint's run was set to {saved['iterations']}, this config has "
                           f"{config['iterations']} (iterations may only grow on resume)")
    if differences:
        raise CheckpointMismatch(
            f"cannot resume from {checkpoint}: it was written with a different config\n  " + "\n  ".join(differences)
            + "\nresume with the checkpoint's config (its config.yaml), or start a fresh run in a new out_dir")


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUMABLE_CHANGES)


_ABSENT = object()  # a setting one of two configs does not have


def _shown(value: Any) -> str:
    return "no such setting (an older envgym wrote it)" if value is _ABSENT else repr(value)


def _lookup(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config.get(part, _ABSENT) if isinstance(config, dict) else _ABSENT
    return config


def _diff(old: Any, new: Any, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}.{key}" if prefix else key)
    elif old is not new and old != new:
        yield prefix, old, new


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as the plain YAML-able dict stored in checkpoints."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config)))
