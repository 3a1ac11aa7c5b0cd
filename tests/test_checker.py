"""The checker passes every registered env and catches each contract violation."""

import gymnasium
import pytest

import envgym
from envgym import registration

import broken_envs  # noqa: F401  (registers the broken envs)


# The envs envgym ships. Not every id registered when this module is collected: test modules collected
# earlier register faulty envs (a memory hog, a crasher) that must never run in the test process.
SHIPPED_ENVS = [i for i in envgym.list_envs() if str(registration.spec(i).entry_point).startswith("envgym.")]


def test_the_shipped_envs_are_found():
    assert {"games/Maze-v0", "games/GuessNumber-v0", "tools/MathPython-v0"} <= set(SHIPPED_ENVS)


@pytest.mark.parametrize("env_id", SHIPPED_ENVS)
def test_every_shipped_env_passes_the_checker(env_id):
    report = envgym.check_env(env_id)
    assert report.ok, report.render()


@pytest.fixture
def register_broken():
    registered = []

    def _register(name):
        env_id = f"broken/{name}-v0"
        envgym.register(env_id, f"broken_envs:{name}", max_turns=10)
        registered.append(env_id)
        return env_id

    yield _register
    for env_id in registered:
        registration._registry.pop(env_id)
        gymnasium.registry.pop(env_id, None)


@pytest.mark.parametrize("name, failing_check, message", [
    ("NonDeterministic", "determinism", "same seed"),
    ("CarriesStateOver", "reset isolation", "reset carries state over"),
    ("SaltedStateKey", "state keys", "differ between two processes"),
    ("CrashesOnEmpty", "bad actions", "empty string"),
    ("OverlappingSplits", "splits", "in both train and test"),
    ("SamplesIllegalMoves", "sampled actions", "which the env flagged invalid"),
    ("SamplesWithoutTheRng", "sampled actions", "two actions for one rng seed"),
    ("ReplaysDifferently", "fork", "diverged at step 0"),
    ("ForkSharesHistory", "fork", "has a different future than the unforked episode"),
])
def test_checker_catches_contract_violations(register_broken, name, failing_check, message):
    report = envgym.check_env(register_broken(name))
    failed = {r.name: r.detail for r in report.failures}
    assert failing_check in failed, report.render()
    assert message in failed[failing_check]
    assert not report.ok and "checks failed" in report.render()


def test_checker_accepts_an_env_instance():
    report = envgym.check_env(envgym.make("games/GuessNumber-v0"))
    assert report.ok, report.render()
    assert report.env_id == "games/GuessNumber-v0"
