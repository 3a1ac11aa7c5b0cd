"""tools/MathPython-v0: generated problems with verified answers, a sandboxed python tool, the oracle."""

import pytest

import envgym
from envgym.envs.tools.math_python import KINDS, MathPython, parse_number


@pytest.fixture(scope="module")
def env():
    env = envgym.make("tools/MathPython-v0")
    yield env
    env.close()


def test_every_kind_generates_a_solvable_problem():
    for kind in KINDS:
        env = MathPython(kinds=(kind,))
        env.reset(seed=0, options={"task": 3})
        assert int(env.gold) == env.problem.solve()
        assert env.problem.question.endswith("?") or env.problem.question.endswith(".")


def test_oracle_runs_python_then_wins_test_tasks(env):
    for task in range(6):
        obs, info = env.reset(seed=task, options={"split": "test", "task": task})
        assert info["tools"][0]["function"]["name"] == "python"
        obs, reward, terminated, _, info = env.step(env.unwrapped.oracle_action())
        assert not terminated and info["invalid_action"] is False
        assert obs.startswith("[python] [ok, exit code 0]") and info["answer"] in obs  # the sandbox computed it
        obs, reward, terminated, _, info = env.step(env.unwrapped.oracle_action())
        assert (reward, terminated, info["won"]) == (1.0, True, True)


def test_wrong_answer_and_invalid_actions(env):
    env.reset(seed=0, options={"split": "test", "task": 0})
    obs, reward, terminated, _, info = env.step("no idea")
    assert info["invalid_action"] and not terminated and "<answer>" in obs
    obs, reward, terminated, _, info = env.step('<tool_call>{"name": "python", "arguments": {}}</tool_call>')
    assert info["invalid_action"] and "'code' is a required property" in obs
    obs, reward, terminated, _, _ = env.step(f"<answer>{int(env.unwrapped.gold) + 1}</answer>")
    assert (reward, terminated) == (0.0, True)


def test_tool_errors_are_observations(env):
    env.reset(seed=0, options={"task": 1})
    obs, *_ = env.step("```python\n1/0\n```")
    assert "ZeroDivisionError" in obs and obs.startswith("[python] [error")


def test_persistent_session_keeps_variables():
    env = MathPython(persistent=True)
    env.reset(seed=0, options={"task": 0})
    env.step("```python\nx = 6 * 7\n```")
    obs, *_ = env.step("```python\nx\n```")
    assert "42" in obs
    env.reset(seed=0, options={"task": 0})
    assert "NameError" in env.step("```python\nx\n```")[0]  # a new episode starts a fresh interpreter
    env.close()


@pytest.mark.parametrize("text, value", [("42", 42), ("The answer is 1,234.", 1234), ("-7.0", -7), ("none", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_passes_the_env_checker():
    report = envgym.check_env("tools/MathPython-v0")
    assert report.ok, report
