"""Evaluation: statistics, the report files, and the `envgym eval` command."""

import json
import math

import pytest

from envgym.evaluation import evaluate, pass_at_k, wilson_interval


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


def test_eval_command(tmp_path, capsys):
    from envgym.cli import main

    code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", "scripted", "--episodes", "3",
                 "--out", str(tmp_path)])
    assert code == 0
    assert "games/GuessNumber-v0 | scripted | 3 | 100.0%" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.png"}


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
