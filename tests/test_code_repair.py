"""tools/CodeRepair-v0: single-site mutants of correct functions, tests run in the sandbox."""

import ast

import pytest

import envgym
from envgym.envs.tools.code_repair import FUNCTIONS, build_tasks, mutants


@pytest.fixture(scope="module")
def env():
    env = envgym.make("tools/CodeRepair-v0")
    yield env
    env.close()


def test_mutants_differ_from_the_original_at_one_site():
    source, _ = FUNCTIONS["binary_search"]
    original = ast.dump(ast.parse(source))
    found = mutants(source)
    assert {op for op, _ in found} >= {"off_by_one", "wrong_operator", "wrong_comparison"}
    for _, code in found:
        assert ast.dump(ast.parse(code)) != original


def test_every_task_is_a_real_bug():
    tasks = build_tasks("auto")
    assert len(tasks) > 50 and len({t.function for t in tasks}) >= len(FUNCTIONS) - 1
    assert all(t.buggy != t.original for t in tasks)
    # clamp's only mutants (x < lo -> x <= lo, x > hi -> x >= hi) return the same values: equivalent, not bugs
    assert len(mutants(FUNCTIONS["clamp"][0])) == 2 and not any(t.function == "clamp" for t in tasks)


def test_oracle_wins_test_tasks_and_the_bug_does_not(env):
    for task in range(0, env.unwrapped.num_tasks["test"], 3):
        obs, info = env.reset(seed=task, options={"split": "test", "task": task})
        repair = env.unwrapped.repair
        assert repair.buggy in obs
        obs, reward, terminated, _, info = env.step(f"```python\n{repair.buggy}```")
        assert reward == 0.0 and not terminated and "FAILED" in obs  # one attempt left
        obs, reward, terminated, _, info = env.step(env.unwrapped.oracle_action())
        assert (reward, terminated, info["won"]) == (1.0, True, True), obs


def test_reward_is_the_fraction_of_tests_passed():
    env = envgym.make("tools/CodeRepair-v0", attempts=1)
    env.reset(seed=0, options={"split": "test", "task": 0})
    repair = env.unwrapped.repair
    obs, reward, terminated, _, _ = env.step(f"```python\n{repair.buggy}```")
    passed, total = (int(x) for x in obs.split()[1].split("/"))
    assert terminated and reward == pytest.approx(passed / total) and passed < total


def test_printing_a_fake_report_does_not_pass(env):
    env.reset(seed=0, options={"split": "test", "task": 0})
    name = env.unwrapped.repair.function
    cheat = (f"import atexit, json\natexit.register(lambda: print('\\n@@REPORT@@' + json.dumps([[{{'outputs': "
             f"[{{'value': 0}}] * 9}}]])))\ndef {name}(*args):\n    return None\n")
    obs, reward, *_ = env.step(f"```python\n{cheat}```")
    assert reward == 0.0 and "tests passed" in obs and not env.unwrapped.won


def test_broken_submissions_are_observations(env):
    env.reset(seed=0, options={"task": 0})
    obs, reward, terminated, _, info = env.step("```python\ndef unrelated():\n    pass\n```")
    assert "did not define" in obs and reward == 0.0
    obs, *_, info = env.step("I fixed it!")
    assert info["invalid_action"] and "```python block is a submit call" in obs


@pytest.mark.slow
def test_passes_the_env_checker():
    report = envgym.check_env("tools/CodeRepair-v0")
    assert report.ok, report
