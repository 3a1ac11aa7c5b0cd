"""Evaluation: statistics, the report files, and the `envgym eval` command."""

import json
import math
import re
import socket
import time

import pytest

import envgym
import envgym.evaluation
from envgym.evaluation import EvalSettings, evaluate, pass_at_k, wilson_interval
from envgym.policies import RandomPolicy
from envgym.trajectory import EpisodeEnd, load_groups


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
    report = evaluate("games/Maze-v0", ["scripted", "random"], EvalSettings(episodes=4, samples=2, seed=3))
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
    report = evaluate("games/GuessNumber-v0", HFPolicy(tiny_model(tokenizer), tokenizer),
                      EvalSettings(episodes=2, max_turns=2, sampling=SamplingParams(max_new_tokens=3),
                                   context="window", window=1))
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
def test_options_given_to_envgym_eval_override_the_configs_eval_settings():
    """`envgym eval --config` starts from `TrainConfig.eval_settings()`; each option given replaces one setting,
    env knobs are added to the config's."""
    import dataclasses

    from envgym.cli import build_parser, eval_settings
    from envgym.trainers.config import load_config, recipes_dir

    recipe = str(recipes_dir() / "quickstart.yaml")
    config = load_config(recipe)
    args = build_parser().parse_args(["eval", "--config", recipe, "--policy", "scripted", "--episodes", "3",
                                      "--temperature", "0.5", "--samples", "2", "--env-kwarg", "size=5"])
    expected = config.eval_settings()
    expected = dataclasses.replace(expected, episodes=3, samples=2, env_kwargs={**config.env.kwargs, "size": 5},
                                   sampling=dataclasses.replace(expected.sampling, temperature=0.5))
    assert eval_settings(args) == ([config.env.id], expected)
    assert eval_settings(build_parser().parse_args(["eval", "--env", "games/Maze-v0", "--policy", "scripted"])) \
        == (["games/Maze-v0"], EvalSettings())


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
    row = evaluate("faulty/EvalFailOnSeed-v0", "scripted", EvalSettings(episodes=8)).rows[0]
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
    ("request_retries", -1, "request_retries must be >= 0, got -1"),
    ("max_concurrency", 0, "max_concurrency must be >= 1, got 0"),
])
def test_eval_settings_check_their_ranges_naming_the_setting(argument, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EvalSettings(**{argument: value})


# -- what the report counts ---------------------------------------------------------------------------------

def test_random_plays_the_env_action_space_and_the_report_says_what_it_sampled(tmp_path):
    report = evaluate(["games/GuessNumber-v0", "games/Maze-v0"], ["random", "scripted"], EvalSettings(episodes=4))
    guess, maze, scripted_guess, _ = report.rows
    assert guess.invalid_action_rate == 0.0 and guess.success_rate < 1.0  # random integers in range
    played = sum(len(e.turns) for g in report.rollouts[0].groups for e in g.episodes)
    assert guess.action_sources == {RandomPolicy.ENV_SAMPLE: played}
    assert set(maze.action_sources) == {RandomPolicy.ADMISSIBLE} and scripted_guess.action_sources == {}
    assert guess.generated_tokens is None and guess.prompt_tokens is None  # nothing counts tokens here
    markdown = report.save(tmp_path)["markdown"].read_text()
    assert f"- games/GuessNumber-v0 · random: {played} actions from the env's sample_action" in markdown
    assert "| random | 4 |" in markdown and "| - | - | 0 | 0 |" in markdown  # tokens not counted: '-'


def test_the_chart_stays_readable_for_many_envs_and_policies():
    import matplotlib.pyplot as plt

    from envgym.evaluation import EvalReport, EvalRow

    envs = ["games/GuessNumber-v0", "games/Maze-v0", "games/Sokoban-v0", "games/Wordle-v0",
            "textworld/CoinCollector-v0", "tools/MathPython-v0"]
    policies = ["scripted", "random", "openai:http://127.0.0.1:8000/v1#SmolLM2-135M-Instruct"]
    rows = [EvalRow(env, policy, 8, 8, 0, (i + j) / 10, ((i + j) / 20, (i + j) / 10 + 0.1), 0.0, 3.0, {1: 0.5},
                    0.0, 0.0, None, None, 0, None, 0, 0.0)
            for i, env in enumerate(envs) for j, policy in enumerate(policies)]
    fig = EvalReport(rows).figure()
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts = [t for t in (*ax.get_yticklabels(), *ax.get_xticklabels(), ax.xaxis.label,
                             *fig.legends[0].get_texts()) if t.get_text() and t.get_visible()]
        assert [t.get_text() for t in ax.get_yticklabels()] == envs
        assert [t.get_text() for t in fig.legends[0].get_texts()] == policies
        boxes = [t.get_window_extent(renderer) for t in texts]
        page = fig.bbox
        for box, text in zip(boxes, texts):  # every label is inside the figure ...
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text
        for a in range(len(boxes)):  # ... and overlaps no other
            for b in range(a + 1, len(boxes)):
                assert not boxes[a].overlaps(boxes[b]), (texts[a].get_text(), texts[b].get_text())
        bars = [patch.get_window_extent(renderer) for patch in ax.patches]
        assert len(bars) == 18 and not any(bar.overlaps(fig.legends[0].get_window_extent(renderer)) for bar in bars)
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def endpoint():
    import threading
    from http.server import ThreadingHTTPServer

    from test_policies import FakeEndpoint

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_request_retries_and_concurrency_reach_the_endpoint(tmp_path, endpoint, capsys):
    from envgym.cli import EXIT_FAILED, main

    from test_policies import FakeEndpoint

    FakeEndpoint.calls.clear()
    code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", f"openai:{endpoint}#down", "--episodes", "1",
                 "--retries", "0", "--request-retries", "1"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED and "HTTP 500" in out and "gave up after 2 attempts" in out, out
    assert FakeEndpoint.calls["down"] == 2  # one request, retried once

    most = {}
    for concurrency in (1, 4):
        FakeEndpoint.most_in_flight = 0
        code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", f"openai:{endpoint}#queue", "--episodes",
                     "4", "--max-turns", "1", "--max-concurrency", str(concurrency), "--out", str(tmp_path)])
        assert code == 0, capsys.readouterr().out
        most[concurrency] = FakeEndpoint.most_in_flight
        assert json.loads((tmp_path / "report.json").read_text())["settings"]["max_concurrency"] == concurrency
    assert most[1] == 1 and most[4] >= 2, most  # the 4 episodes' first requests go out together unless capped


def test_an_endpoint_with_send_tools_calls_a_tool_env_s_tools_through_its_schemas(tmp_path, endpoint, capsys):
    from envgym.cli import EXIT_USAGE, main

    code = main(["eval", "--env", "tools/MathPython-v0", "--policy", f"openai:{endpoint}#caller", "--episodes", "1",
                 "--max-turns", "2", "--send-tools", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    saved = json.loads((tmp_path / "report.json").read_text())
    [episode] = [e for g in load_groups(tmp_path / saved["results"][0]["episodes_file"]) for e in g.episodes]
    first, second = episode.turns
    assert first.action.startswith('<tool_call>{"name": "python"') and not first.invalid_action
    assert "42" in second.observation  # the sandbox ran the endpoint's call
    assert saved["settings"]["send_tools"] is True

    assert main(["eval", "--env", "tools/MathPython-v0", "--policy", "scripted", "--send-tools"]) == EXIT_USAGE
    assert "applies to openai: policies only" in capsys.readouterr().out


def test_eval_of_an_endpoint_counts_its_tokens_cut_offs_and_context_endings(tmp_path, endpoint, capsys):
    from envgym.cli import main

    budget = 120  # GuessNumber's first prompt is ~50 words (the fake endpoint's tokens); each turn adds ~10
    code = main(["eval", "--env", "games/GuessNumber-v0", "--policy", f"openai:{endpoint}#cut", "--episodes", "3",
                 "--max-context-tokens", str(budget), "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    saved = json.loads((tmp_path / "report.json").read_text())
    row = saved["results"][0]
    turns = [t for g in load_groups(tmp_path / row["episodes_file"]) for e in g.episodes for t in e.turns]
    episodes = [e for g in load_groups(tmp_path / row["episodes_file"]) for e in g.episodes]
    assert saved["settings"]["max_context_tokens"] == budget and row["context_budget"] == budget
    assert row["generated_tokens"] == sum(t.completion_tokens for t in turns) > 0
    assert row["prompt_tokens"] == sum(t.prompt_tokens for t in turns) > 0
    assert row["cut_off_rate"] == 1.0  # the endpoint said finish_reason "length" every time
    ended = sum(e.end is EpisodeEnd.CONTEXT for e in episodes)
    assert row["context_ended"] == ended > 0 and all(t.prompt_tokens < budget for t in turns)
    out = capsys.readouterr().out
    assert f"games/GuessNumber-v0 · openai:{endpoint}#cut: context budget {budget} tokens" in out


def test_eval_checks_the_context_budget_option(capsys):
    from envgym.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--env", "games/GuessNumber-v0", "--policy", "random", "--max-context-tokens", "0"])
    assert exit_info.value.code == 2 and "--max-context-tokens: must be >= 1, got 0" in capsys.readouterr().err
