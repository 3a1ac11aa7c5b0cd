"""Evaluation: statistics, the report files, and the `envgym eval` command."""

import json
import math
import re
import socket
import time

import pytest

import envgym
import envgym.evaluation
from envgym.evaluation import evaluate, pass_at_k, wilson_interval
from envgym.trajectory import load_groups


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in range(1, 200):  # the interval holds the rate exactly, rounding included
        for k in (0, 1, n // 2, n - 1, n):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_evaluate_scripted_and_random_on_maze(tmp_path):
    report = evaluate("games/Maze-v0", ["scripted", "random"], episodes=4, samples=2, seed=3)
    scripted, random = report.rows
    assert scripted.success_rate == 1.0 and scripted.pass_at_k == {1: 1.0, 2: 1.0}
    assert scripted.invalid_action_rate == 0.0 and scripted.episodes == 8 and scripted.tasks == 4
    assert random.mean_turns >= scripted.mean_turns
    assert 0 <= random.success_ci95[0] <= random.success_rate <= random.success_ci95[1] <= 1
    paths = report.save(tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert [r["policy"] for r in saved["results"]] == ["scripted", "random"]
    assert "| games/Maze-v0 | scripted | 8 | 100.0%" in paths["markdown"].read_text()
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    for row, result in zip(saved["results"], report.rollouts):  # every episode is stored, with the failures
        groups = load_groups(tmp_path / row["episodes_file"])
        assert groups == result.groups and row["failures"] == [] and row["episodes"] == 8
        assert sum(len(g.episodes) for g in groups) == 8


def test_eval_command(tmp_path, capsys):
    from envgym.cli import main

    code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", "scripted", "--episodes", "3",
                 "--out", str(tmp_path)])
    assert code == 0
    assert "games/GuessNumber-v0 | scripted | 3 | 100.0%" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.png", "episodes"}
    assert [p.name for p in (tmp_path / "episodes").iterdir()] == ["00_games_GuessNumber-v0_scripted.jsonl"]


def test_eval_command_passes_env_knobs_and_rejects_unknown_ones(tmp_path, capsys):
    import json

    from envgym.cli import main

    for kwargs, out in (([], tmp_path / "default"), (["--env-kwarg", "size=2"], tmp_path / "small")):
        assert main(["eval", "--env", "games/Maze-v0", *kwargs, "--policy", "scripted", "--episodes", "6",
                     "--out", str(out)]) == 0
    default, small = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("default", "small"))
    assert small["settings"]["env_kwargs"] == {"size": 2}
    assert small["results"][0]["mean_turns"] <= 3 < 5 <= default["results"][0]["mean_turns"]  # oracle paths: 2x2 vs 5x5
    capsys.readouterr()
    assert main(["eval", "--env", "games/Maze-v0", "--env-kwarg", "colour=red", "--policy", "scripted"]) == 2
    assert "colour" in capsys.readouterr().out


def test_engine_args_without_a_vllm_policy_are_refused(capsys):
    from envgym.cli import main

    assert main(["eval", "--env", "games/Maze-v0", "--policy", "random", "--engine-arg", "max_model_len=2048"]) == 2
    assert "apply to vllm: policies only" in capsys.readouterr().out


def test_eval_help_renders(capsys):
    from envgym.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["eval", "--help"])
    assert exit_info.value.code == 0 and "--policy SPEC" in capsys.readouterr().out


def test_unknown_env_fails_before_any_model_loads():
    with pytest.raises(KeyError, match="unknown env id"):
        evaluate("games/Maze-v7", "hf:/does/not/matter")


def test_evaluate_a_token_policy_object_counts_generated_tokens():
    from envgym.models import tiny_model, word_level_tokenizer
    from envgym.policies import HFPolicy, SamplingParams

    tokenizer = word_level_tokenizer(["1", "50", "100"])
    report = evaluate("games/GuessNumber-v0", HFPolicy(tiny_model(tokenizer), tokenizer), episodes=2, max_turns=2,
                      sampling=SamplingParams(max_new_tokens=3), context="window", window=1)
    row = report.rows[0]
    assert row.policy == "HFPolicy" and row.episodes == 2 and 2 <= row.generated_tokens <= 2 * 2 * 3


def test_a_checkpoint_gets_the_same_number_in_training_and_from_envgym_eval(tmp_path, capsys):
    """One evaluation path: `envgym eval --config` replays the run's held-out evaluation exactly (sampling too)."""
    from envgym.cli import main
    from envgym.trainers import Trainer, config_from_dict

    config = config_from_dict({
        "iterations": 2, "threads": 1, "out_dir": str(tmp_path / "run"),
        "env": {"id": "games/Maze-v0", "kwargs": {"size": 3, "view": "local"}, "max_turns": 6,
                "extract_action": "admissible"},
        "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0},
        "optim": {"epochs": 1}, "sft": {"steps": 20, "episodes": 128, "batch_tokens": 2048},
        "eval": {"every": 2, "episodes": 24, "temperature": 1.0}, "checkpoint": {"every": 2}})
    trainer = Trainer(config)
    in_run = trainer.fit()[-1]
    checkpoint = tmp_path / "run" / "checkpoints" / "iter_000002"
    assert main(["eval", "--config", str(checkpoint / "config.yaml"), "--policy", f"hf:{checkpoint}",
                 "--out", str(tmp_path / "eval")]) == 0
    row = json.loads((tmp_path / "eval" / "report.json").read_text())["results"][0]
    settings = json.loads((tmp_path / "eval" / "report.json").read_text())["settings"]
    assert settings["extract_action"] == "admissible" and settings["sampling"]["temperature"] == 1.0
    assert row["episodes"] == in_run["eval/episodes"] == 24
    assert 0.0 < row["success_rate"] < 1.0  # the warm-started policy wins some sampled episodes, not all
    assert row["success_rate"] == in_run["eval/success"]
    assert row["mean_return"] == pytest.approx(in_run["eval/return"], abs=1e-12)
    assert row["invalid_action_rate"] == pytest.approx(in_run["eval/invalid_rate"], abs=1e-12)
# -- failures are failures ---------------------------------------------------------------------------------

for _name, _cls in {"Raises": "RaisesOnStep", "Hangs": "HangsOnStep", "FailOnSeed": "FailOnSeed"}.items():
    envgym.register(f"faulty/Eval{_name}-v0", f"faulty_envs:{_cls}", max_turns=10)


def test_eval_exits_one_when_every_episode_failed_and_says_why(capsys):
    from envgym.cli import EXIT_FAILED, main

    code = main(["eval", "--env", "faulty/EvalRaises-v0", "--policy", "scripted", "--episodes", "3",
                 "--retries", "1"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED, out
    assert ("faulty/EvalRaises-v0 · scripted: 3 of 3 episodes dropped after failing past 1 retries (counted as "
            "losses); 6 failed attempts, causes: 6x step 0: step('50') raised RuntimeError: the simulator "
            "exploded") in out


def test_eval_exits_one_when_some_episodes_failed(capsys):
    from envgym.cli import EXIT_FAILED, main

    code = main(["eval", "--env", "faulty/EvalFailOnSeed-v0", "--policy", "scripted", "--episodes", "8"])
    out = capsys.readouterr().out
    row = evaluate("faulty/EvalFailOnSeed-v0", "scripted", episodes=8).rows[0]
    assert 0 < row.dropped_episodes < 8 and row.episodes == 8 - row.dropped_episodes  # some seeds are odd
    assert code == EXIT_FAILED
    assert f"{row.dropped_episodes} of 8 episodes dropped after failing past 2 retries" in out
    assert "ValueError: cannot start from seed" in out


def test_a_dead_endpoint_fails_fast_with_the_timeouts_given(capsys):
    from envgym.cli import EXIT_FAILED, main

    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    started = time.monotonic()
    try:
        code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", f"openai:{url}#m", "--episodes", "2",
                     "--request-timeout", "0.3", "--retries", "0"])
    finally:
        silent.close()
    out = capsys.readouterr().out
    assert code == EXIT_FAILED
    assert "2 of 2 episodes dropped after failing past 0 retries" in out
    assert f"no answer from {url}/chat/completions" in out and "timeout 0.3s" in out
    assert time.monotonic() - started < 30  # 4 tries x 0.3 s + backoff, not 4 x 60 s x 3 attempts


@pytest.mark.slow
def test_step_timeout_and_num_envs_reach_the_pool(capsys, monkeypatch):
    from envgym.cli import EXIT_FAILED, main

    pools = []

    class RecordedPool(envgym.evaluation.EnvPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append((self.num_envs, self.step_timeout, self.backend))

    monkeypatch.setattr(envgym.evaluation, "EnvPool", RecordedPool)
    started = time.monotonic()
    code = main(["eval", "--env", "faulty/EvalHangs-v0", "--policy", "scripted", "--episodes", "2",
                 "--backend", "process", "--num-envs", "1", "--step-timeout", "0.5", "--retries", "0"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED and pools == [(1, 0.5, "process")]
    assert "2x step 0: step timed out after 0.5s; the worker was killed and restarted" in out
    assert time.monotonic() - started < 40  # a hung step costs 0.5 s, not the default 60


@pytest.mark.parametrize("argument, value, message", [
    ("episodes", 0, "episodes must be >= 1, got 0"), ("max_turns", 0, "max_turns must be >= 1, got 0"),
    ("step_timeout", 0, "step_timeout must be > 0, got 0"), ("retries", -1, "retries must be >= 0, got -1"),
    ("num_envs", 0, "num_envs must be >= 1, got 0"), ("request_timeout", -1.0, "request_timeout must be > 0"),
])
def test_evaluate_checks_its_arguments_first(argument, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate("games/GuessNumber-v0", "hf:/not/loaded", **{argument: value})
