"""What a run shows and leaves behind: a rich progress bar, heartbeat lines, `metrics.jsonl`, TensorBoard events, a
curve PNG.

Files under the run's `out_dir`: `metrics.jsonl` (one JSON object per logged
step, with an `iteration` key), `tensorboard/` (SummaryWriter event files) and
`learning_curve.png` (held-out and training success against iteration).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from envgym.run_files import CURVE_FILE, METRICS_FILE, TENSORBOARD_DIR

#: Seconds between two heartbeat lines of a running `Heartbeat`.
HEARTBEAT_S = 30.0


class Heartbeat:
    """What a run is doing now, said in one line every `HEARTBEAT_S` seconds while started.

    The trainer names each phase as it enters it (`phase`) and reports the
    phase's progress through `progress(done, total)`, the `on_episode` callback
    of `collect_groups` and `evaluate_policy`. A timer thread prints, so a phase
    that reports no progress (a checkpoint, a rollout worker's batch) still gets
    its lines, and they reach a file or a pipe as they would a terminal.
    """

    def __init__(self, iterations: int):
        self.iterations = iterations
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.phase("starting", 0)

    def phase(self, name: str, iteration: int, unit: str = "episodes") -> None:
        """From now on the run is in phase `name` of `iteration` (0 before RL), whose progress counts `unit`s."""
        with self._lock:
            self._name, self._iteration, self._unit = name, iteration, unit
            self._done, self._total, self._since = 0, None, time.monotonic()

    def progress(self, done: int, total: int | None = None) -> None:
        """`done` of the current phase's `total` units (None: unknown) are finished."""
        with self._lock:
            self._done, self._total = done, total

    def line(self) -> str:
        """E.g. `iteration 3/10 rollout, 12/32 episodes, 4.1 episodes/min, 2m55s in this phase`."""
        with self._lock:
            name, iteration, unit, done, total = self._name, self._iteration, self._unit, self._done, self._total
            seconds = time.monotonic() - self._since
        parts = [f"iteration {iteration}/{self.iterations} {name}"]
        if done or total:
            parts.append(f"{done}/{'?' if total is None else total} {unit}")
        if done:
            parts.append(f"{60 * done / max(seconds, 1e-9):.1f} {unit}/min")
        parts.append(f"{int(seconds) // 60}m{int(seconds) % 60:02d}s in this phase")
        return ", ".join(parts)

    def start(self, say: Callable[[str], None]) -> None:
        """Call `say(self.line())` every `HEARTBEAT_S` seconds from a daemon thread until `stop`."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._beat, args=(say, HEARTBEAT_S), name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, say: Callable[[str], None], every: float) -> None:
        while not self._stopped.wait(every):
            say(self.line())

    def stop(self) -> None:
        """End the lines (idempotent); returns once the thread has printed its last."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class RunLog:
    """Context manager logging metrics of iterations `start..total` of a run.

    On entry `metrics.jsonl` is rewritten from `history` (the metrics up to the
    checkpoint a resumed run starts from), so iterations a killed run lost are
    not listed twice; TensorBoard purges its later events the same way. Inside,
    `heartbeat` (if given) prints its lines above the bar.
    """

    def __init__(self, out_dir: str | Path, *, start: int, total: int, history: list[dict[str, Any]],
                 heartbeat: Heartbeat | None = None):
        self.out_dir = Path(out_dir)
        self.start, self.total, self.history, self.heartbeat = start, total, history, heartbeat
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())

    def __enter__(self) -> RunLog:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / METRICS_FILE).open("w", encoding="utf-8") as f:
            for metrics in self.history:
                f.write(json.dumps(metrics) + "\n")
        self.writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=self.start or None)
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.total, completed=self.start, status="")
        if self.heartbeat is not None:
            self.heartbeat.start(self._say)
        return self

    def _say(self, line: str) -> None:
        """`line` after the time of day, never wrapped (a file or a pipe gets 80 columns), never read as markup."""
        self.progress.console.print(f"[{time.strftime('%H:%M:%S')}] {line}", markup=False, highlight=False,
                                    soft_wrap=True)

    def log(self, metrics: dict[str, Any], *, step: int, advance: bool = True) -> None:
        """Append `metrics` of `step` to the JSONL and TensorBoard, and move the bar.

        Metrics of phases other than "rl" (the initial and post-SFT evaluations)
        go to TensorBoard under `PHASE/...` tags, so they do not collide at step 0.
        """
        with (self.out_dir / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        phase = metrics.get("phase", "rl")
        for key, value in metrics.items():
            if isinstance(value, float):
                self.writer.add_scalar(key if phase == "rl" else f"{phase}/{key}", value, step)
        self.writer.flush()
        status = "  ".join(f"{k.split('/')[0]} {metrics[k]:.2f}" for k in ("train/success", "eval/success")
                           if k in metrics)
        self.progress.update(self.task, advance=1 if advance else 0, status=status)
        if "eval/success" in metrics:
            where = f"iteration {step}" if phase == "rl" else f"after {phase}"
            self.progress.console.log(f"{where}: held-out success {metrics['eval/success']:.3f}")

    def plot_curve(self) -> Path:
        return plot_learning_curve(self.history, self.out_dir / CURVE_FILE)

    def __exit__(self, *exc: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.progress.stop()
        self.writer.close()


def plot_learning_curve(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Held-out success (markers) and training success (line) against RL iteration, as a PNG.

    The initial and post-SFT evaluations are drawn as their own markers at iteration 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    start = [(m["iteration"], m["eval/success"]) for m in history if m.get("phase") != "rl" and "eval/success" in m]
    for key, style, label in (("train/success", "-", "train (sampled)"), ("eval/success", "o-", "held-out test")):
        points = [(m["iteration"], m[key]) for m in history if key in m and m.get("phase", "rl") == "rl"]
        if key == "eval/success":
            points = start[-1:] + points  # the held-out line starts where RL started
        if points:
            ax.plot(*zip(*points), style, label=label)
    for phase, marker, label in (("init", "kx", "held-out, initial policy"), ("sft", "s", "held-out, after SFT")):
        points = [(m["iteration"], m["eval/success"]) for m in history if m.get("phase") == phase]
        if points:
            ax.plot(*zip(*points), marker, markersize=8, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
