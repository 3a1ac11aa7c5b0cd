"""Making TextWorld games offline and keeping them in an on-disk cache.

A game is a pure function of (family, difficulty settings, seed); the env maps
(split, task) to a seed (see `env.TextWorldEnv.task_seed_of`). Compiled games
live under ``$ENVGYM_CACHE/textworld`` (default: ``platformdirs.user_cache_dir("envgym")``),
one ``.z8`` + ``.json`` pair per game. Two processes that want the same game at
once take a file lock: one compiles into a temporary folder and renames the
files into place (``.json`` first, the ``.z8`` last marks the game complete),
the other waits and reuses them. Inform 7 writes scratch files into ``$HOME``
while compiling; those go to a folder inside the cache instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import platformdirs
import textworld
import textworld.challenges
from filelock import FileLock


def cache_root() -> Path:
    """Where compiled games are kept: ``$ENVGYM_CACHE/textworld`` or the user cache dir of envgym."""
    base = os.environ.get("ENVGYM_CACHE") or platformdirs.user_cache_dir("envgym")
    return Path(base) / "textworld"


@contextlib.contextmanager
def _scratch_home(folder: Path) -> Iterator[None]:
    """Point HOME and TMPDIR at `folder` while Inform 7 compiles (it writes ~/Inform and temp files)."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("HOME", "TMPDIR")}
    os.environ["HOME"] = os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = None


def _slug(settings: Mapping[str, Any]) -> str:
    return "-".join(f"{k}={settings[k]}" for k in sorted(settings)) or "default"


def game_file(family: str, settings: Mapping[str, Any], seed: int,
              make: Callable[[textworld.GameOptions], textworld.Game]) -> Path:
    """The path of the compiled game (family, settings, seed), compiling it first if no process has yet.

    `make(options)` builds the `textworld.Game` from options whose `seeds` are set to `seed`.
    """
    folder = cache_root() / family / _slug(settings)
    z8 = folder / f"{seed}.z8"
    if z8.exists():
        return z8
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f"{seed}.lock")):
        if z8.exists():  # another process made it while we waited
            return z8
        scratch = Path(tempfile.mkdtemp(prefix=f".{seed}-", dir=folder))
        try:
            options = textworld.GameOptions()
            options.seeds = seed
            options.path = str(scratch / "game.z8")
            options.force_recompile = True
            with _scratch_home(cache_root() / ".inform7-home"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Jericho's "not fully supported" while checking the walkthrough
                compiled = Path(textworld.generator.compile_game(make(options), options))
            os.replace(compiled.with_suffix(".json"), folder / f"{seed}.json")
            os.replace(compiled, z8)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return z8


def challenge(name: str, settings: Mapping[str, Any]) -> Callable[[textworld.GameOptions], textworld.Game]:
    """A `make(options)` for TextWorld's challenge `name` (e.g. "tw-coin_collector") with its `settings`."""
    make_challenge = textworld.challenges.CHALLENGES[name][1]
    return lambda options: make_challenge(dict(settings), options)


def custom(nb_rooms: int, nb_objects: int, quest_length: int) -> Callable[[textworld.GameOptions], textworld.Game]:
    """A `make(options)` for `textworld.generator.make_game` with the usual difficulty knobs."""
    def make(options: textworld.GameOptions) -> textworld.Game:
        options.nb_rooms, options.nb_objects, options.quest_length = nb_rooms, nb_objects, quest_length
        return textworld.generator.make_game(options)
    return make
