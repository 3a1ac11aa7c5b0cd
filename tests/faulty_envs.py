"""Envs that fail in one way each, for the pool and rollout fault tests (importable by worker processes).

Each is GuessNumber with one fault. `FailOnSeed` fails only for some seeds so
that a retry with the same seed fails again (the group is dropped) while other
groups succeed; `FailOnce` fails the first episode of each worker and then
works, so a retry with a fresh env recovers.
"""

import os
import time

from envgym.envs.games.guess import GuessNumber

#: Marker file that makes FailOnce fail only the first time it is used in any process.
FAIL_ONCE_MARKER = "ENVGYM_TEST_FAIL_ONCE_MARKER"


class RaisesOnStep(GuessNumber):
    def step(self, action):
        raise RuntimeError("the simulator exploded")


class HangsOnStep(GuessNumber):
    def step(self, action):
        time.sleep(60)
        return super().step(action)


class SlowStep(GuessNumber):
    """Each step takes 0.2 s (more than the tests' short timeouts, less than a hang); `info["slept"]` is the
    (start, end) of that sleep in wall-clock seconds, comparable across processes."""

    def step(self, action):
        start = time.time()
        time.sleep(0.2)
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "slept": (start, time.time())}


class CrashesOnStep(GuessNumber):
    """Kills its own process, as a segfaulting native extension would."""

    def step(self, action):
        os._exit(3)


class NonStrObservation(GuessNumber):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return {"text": obs}, reward, terminated, truncated, info


class MissingStateKey(GuessNumber):
    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        del info["state_key"]
        return obs, info


class FailOnSeed(GuessNumber):
    """Raises in reset when the seed is odd."""

    def reset(self, *, seed=None, options=None):
        if seed is not None and seed % 2 == 1:
            raise ValueError(f"cannot start from seed {seed}")
        return super().reset(seed=seed, options=options)


class FailOnce(GuessNumber):
    """The first step ever (across processes, via a marker file named by $ENVGYM_TEST_FAIL_ONCE_MARKER) raises."""

    def step(self, action):
        try:  # O_EXCL: exactly one process creates the marker, even when workers race
            os.close(os.open(os.environ[FAIL_ONCE_MARKER], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return super().step(action)
        raise RuntimeError("transient failure")


class NoOracle(GuessNumber):
    def oracle_action(self):
        raise NotImplementedError("NoOracle has no oracle")


class SegfaultsOnStep(GuessNumber):
    """Dereferences a null pointer, as a buggy native extension would."""

    def step(self, action):
        import ctypes

        ctypes.string_at(0)


class AllocatesOnStep(GuessNumber):
    """Asks for 16 GiB at once, as a runaway simulator would."""

    def step(self, action):
        self.hoard = bytearray(16 * 2**30)
        return super().step(action)


class RaisesOnExplode(GuessNumber):
    """Raises on the action "explode" only, so a served session can fail while others go on."""

    def step(self, action):
        if action == "explode":
            raise RuntimeError("the simulator exploded")
        return super().step(action)
