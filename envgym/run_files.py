"""The files a training run leaves in its `out_dir`: their names and the stored episode samples' format.

The trainer writes through this module and `envgym view` reads through it, so neither imports the other.

    metrics.jsonl                one JSON object per logged step, with an `iteration` key
    tensorboard/                 SummaryWriter event files
    learning_curve.png           held-out and training success against iteration
    checkpoints/iter_NNNNNN/     a checkpoint, with its `config.yaml`
    episodes/iter_NNNNNN.jsonl   the first groups of an iteration's rollout (`envgym.trajectory.save_groups`;
                                 `.parquet` with `log_episodes.format`), annotated by the trainer
                                 (`envgym.trainers.episode_log`)
    episodes/iter_NNNNNN.json    {"iteration", "groups_collected", "groups_kept", "failures"}: every failed
                                 episode attempt of the iteration's rollout (group, member, attempt, seed, cause)

N is the iteration as `metrics.jsonl` numbers it (1-based).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envgym.trajectory import Group, load_groups, save_groups

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
EPISODES_DIR = "episodes"


@dataclass(frozen=True)
class EpisodeSample:
    """The stored episodes of one iteration and the failures of its rollout."""

    iteration: int
    groups: list[Group]
    failures: list[dict[str, Any]]
    groups_collected: int


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The run's `metrics.jsonl`, one dict per logged step (blank lines skipped); [] if the run logged none."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_path(out_dir: str | Path, iteration: int, fmt: str = "jsonl") -> Path:
    return Path(out_dir) / EPISODES_DIR / f"iter_{iteration:06d}.{fmt}"


def write_sample(out_dir: str | Path, iteration: int, groups: Sequence[Group], *, failures: list[dict[str, Any]],
                 groups_collected: int, fmt: str = "jsonl") -> Path:
    """Write one iteration's sample (groups file, then its sidecar); returns the groups file's path."""
    path = save_groups(sample_path(out_dir, iteration, fmt), groups)
    sidecar = {"iteration": iteration, "groups_collected": groups_collected, "groups_kept": len(groups),
               "failures": failures}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    return path


def read_samples(out_dir: str | Path) -> list[EpisodeSample]:
    """Every sample stored under `out_dir/episodes`, by iteration (a missing sidecar reads as no failures)."""
    directory = Path(out_dir) / EPISODES_DIR
    paths = sorted(p for p in directory.glob("iter_*.*") if p.suffix in (".jsonl", ".parquet"))
    samples = []
    for path in paths:
        sidecar_path = path.with_suffix(".json")
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.exists() else {}
        groups = load_groups(path)
        samples.append(EpisodeSample(iteration=int(path.stem.removeprefix("iter_")), groups=groups,
                                     failures=sidecar.get("failures", []),
                                     groups_collected=sidecar.get("groups_collected", len(groups))))
    return samples


def checkpoint_configs(out_dir: str | Path) -> list[Path]:
    """The `config.yaml` of every checkpoint under `out_dir`, oldest first."""
    return sorted((Path(out_dir) / CHECKPOINTS_DIR).glob("iter_*/config.yaml"))
