"""`RunDirectory`: one run at a time in an `out_dir`, and no run silently writing over another.

A run claims its directory before it reads or writes anything there:

- it takes `OUT/.envgym.lock`, an OS file lock the kernel releases when the
  process ends, however it ends; `OUT/.envgym.lock.json` names the holder
  (pid, host, start time, command), so a second run refuses with a message
  naming it. The lock belongs to the process: the same process may claim its
  own directory again (a notebook cell run twice); other processes are refused;
- a fresh run refuses a directory that already holds a run (checkpoints or
  `metrics.jsonl`) unless it is told to resume that run or to overwrite it;
  overwriting deletes only the files a run writes (`RUN_FILES`);
- leftovers of checkpoint saves that never finished are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import filelock

from envgym.run_files import CHECKPOINTS_DIR, CURVE_FILE, EPISODES_DIR, METRICS_FILE, TENSORBOARD_DIR
from envgym.trainers.checkpoint import remove_unfinished
from envgym.trainers.config import ConfigError

LOCK_FILE = ".envgym.lock"
HOLDER_FILE = ".envgym.lock.json"
NAN_BATCH_PATTERN = "nan_batch_iter*.pt"
#: What a training run writes into its out_dir (names and glob patterns), and so what --overwrite deletes.
RUN_FILES = (CHECKPOINTS_DIR, METRICS_FILE, TENSORBOARD_DIR, CURVE_FILE, NAN_BATCH_PATTERN, EPISODES_DIR)


class OutDirInUse(OSError):
    """Another process holds the out_dir's lock; the message names it."""


class OutDirHoldsRun(ConfigError):
    """A fresh run was pointed at a directory holding another run; resume it, overwrite it, or pick another."""


class RunDirectory:
    """The claimed `out_dir` of one run; `release()` (or leaving a `with` block) gives it up."""

    def __init__(self, path: Path, lock: filelock.BaseFileLock, created: bool = False):
        self.path, self._lock, self._created = path, lock, created

    @classmethod
    def claim(cls, out_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> RunDirectory:
        """Lock `out_dir` for this process; refuse it if another run uses it, or (unless `resume` or `overwrite`)
        if it holds a finished or interrupted run. `overwrite` only permits: `clear_run()` deletes."""
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in out_dir, or delete it")
        path = Path(out_dir)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(path / LOCK_FILE, timeout=0, is_singleton=True)
            lock.acquire()
        except filelock.Timeout:
            raise OutDirInUse(f"out_dir {path} is in use by another run ({_describe_holder(path)}); wait for it "
                              "to end, or choose another out_dir") from None
        except OSError as exc:
            raise ConfigError(f"out_dir {path} cannot be written: {exc.strerror or exc}") from None
        run = cls(path, lock, created)
        try:
            if lock.lock_counter == 1:  # the first claim of this process: record who holds the lock
                _write_holder(path)
            found = run.run_files()
            if found and not (resume or overwrite):
                raise OutDirHoldsRun(f"out_dir {path} already holds a run ({', '.join(found)}); continue it with "
                                     "--resume, delete it and start over with --overwrite, or choose another out_dir")
            remove_unfinished(path)
        except BaseException:
            run.release()
            raise
        return run

    def run_files(self) -> list[str]:
        """The names of run files present (a staging leftover or an empty checkpoints folder is not a run)."""
        found = []
        for pattern in RUN_FILES:
            for match in sorted(self.path.glob(pattern)):
                if match.name == CHECKPOINTS_DIR and not any(match.glob("iter_*")):
                    continue
                found.append(match.name + ("/" if match.is_dir() else ""))
        return found

    def clear_run(self) -> None:
        """Delete the run files of a previous run (see RUN_FILES); nothing else in the directory is touched."""
        for pattern in RUN_FILES:
            for match in self.path.glob(pattern):
                if match.is_dir():
                    shutil.rmtree(match)
                else:
                    match.unlink()

    def release(self) -> None:
        """Give the directory up (idempotent); the holder record goes first, so it never names a later holder."""
        if not self._lock.is_locked:
            return
        last = self._lock.lock_counter == 1
        if last:
            (self.path / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()
        if last and self._created and [p.name for p in self.path.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(self.path)  # a run that wrote nothing (a bad config) leaves no directory behind

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _write_holder(path: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""}
    staging = path / f"{HOLDER_FILE}.{os.getpid()}"
    staging.write_text(json.dumps(record), encoding="utf-8")
    os.replace(staging, path / HOLDER_FILE)  # a reader sees the old record or the new one, never half of one


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads((path / HOLDER_FILE).read_text(encoding="utf-8"))
        text = f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its holder has not recorded itself in {path / HOLDER_FILE} yet"
    return text + (f": {holder['command']}" if holder.get("command") else "")
