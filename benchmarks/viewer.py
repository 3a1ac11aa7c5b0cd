"""`envgym view` on a run of 40 iterations with 50 stored episodes per sample: seconds to write the page, MB.

    python benchmarks/viewer.py                  # trains the run first (a few minutes), then measures
    python benchmarks/viewer.py --run runs/X     # measures the page of an existing run

The run is the quickstart recipe (tiny model, 4x4 local-view maze, 12 turns, warm start) with
10 groups of 5 episodes per iteration, every group stored every iteration. The baseline, measured
in the same run, is reading the stored samples back (`read_samples`, i.e. `load_groups` on every
file): the least any page of these episodes costs. Targets (issue 19): page written in under 5 s,
page under 10 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ITERATIONS, GROUPS, GROUP_SIZE = 40, 10, 5


def train(out_dir: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from envgym.trainers import Trainer, load_config
    from envgym.trainers.config import recipes_dir

    overrides = [f"out_dir={out_dir}", f"iterations={ITERATIONS}", f"rollout.n_groups={GROUPS}",
                 f"rollout.group_size={GROUP_SIZE}", "optim.minibatches=2", "eval.every=10", "eval.episodes=50",
                 "checkpoint.every=40", "log_episodes.every=1", f"log_episodes.groups={GROUPS}"]
    Trainer(load_config(recipes_dir() / "quickstart.yaml", overrides)).fit()


def timed(function, repeats: int) -> float:
    """The median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="an existing run directory (default: train one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from envgym.run_files import EPISODES_DIR, read_samples
    from envgym.viewer import write_view

    run = args.run or Path(tempfile.mkdtemp(prefix="envgym-view-bench-")) / "run"
    if args.run is None:
        print(f"training {ITERATIONS} iterations into {run} ...", file=sys.stderr)
        train(run)
    samples = read_samples(run)
    episodes = [sum(len(g.episodes) for g in s.groups) for s in samples]
    stored_mb = sum(p.stat().st_size for p in (run / EPISODES_DIR).iterdir()) / 1e6
    turns = sum(len(e.turns) for s in samples for g in s.groups for e in g.episodes)
    print(f"run {run}: {len(samples)} samples, {min(episodes)}-{max(episodes)} episodes each, {turns} turns, "
          f"{stored_mb:.1f} MB stored")
    page = run / "view.html"
    read_s = timed(lambda: read_samples(run), args.repeats)
    write_s = timed(lambda: write_view(run, page), args.repeats)
    page_mb = page.stat().st_size / 1e6
    print(f"read the stored samples (baseline): {read_s:.2f} s")
    print(f"write the page (envgym view):       {write_s:.2f} s  = {write_s / read_s:.2f}x the baseline  "
          f"[target < 5 s: {'met' if write_s < 5 else 'MISSED'}]")
    print(f"page size: {page_mb:.2f} MB = {page_mb / stored_mb:.2f}x the stored samples  "
          f"[target < 10 MB: {'met' if page_mb < 10 else 'MISSED'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
