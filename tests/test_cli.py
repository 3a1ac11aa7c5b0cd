"""The `envgym` command: output people read and exit codes scripts rely on."""

import subprocess
import sys
import threading
import time

import pytest

from envgym.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main, parse_kwargs


def test_list_shows_builtin_ids(capsys):
    assert main(["list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "games/Maze-v0" in out and "games/GuessNumber-v0" in out


def test_info_shows_splits_action_format_and_knobs(capsys):
    assert main(["info", "games/Maze-v0", "size=4"]) == EXIT_OK
    out = capsys.readouterr().out
    for text in ("test (1000 tasks)", "action format", "north, south, east or west", "loops", "4x4 maze"):
        assert text in out


def test_unknown_id_is_a_usage_error_with_a_suggestion(capsys):
    assert main(["info", "games/Maze-v7"]) == EXIT_USAGE
    assert "did you mean 'games/Maze-v0'" in capsys.readouterr().out


def test_bad_constructor_argument_is_a_usage_error(capsys):
    assert main(["info", "games/Maze-v0", "size=1"]) == EXIT_USAGE
    assert "size must be >= 2" in capsys.readouterr().out
    assert main(["info", "games/Maze-v0", "colour=red"]) == EXIT_USAGE


def test_check_exits_zero_on_a_good_env_and_one_on_a_broken_env(capsys):
    assert main(["check", "games/GuessNumber-v0"]) == EXIT_OK
    assert "all checks passed" in capsys.readouterr().out
    import envgym
    from envgym import registration

    envgym.register("broken/Crash-v0", "broken_envs:CrashesOnEmpty")
    try:
        assert main(["check", "broken/Crash-v0"]) == EXIT_FAILED
        assert "FAIL  bad actions" in capsys.readouterr().out
    finally:
        registration._registry.pop("broken/Crash-v0")
    assert main(["check"]) == EXIT_USAGE


def test_play_in_a_terminal_until_the_game_is_won():
    # A person (here, a pipe) plays the guessing game by bisection and wins. The answer to each guess is read
    # after a pause, as a reader on a loaded machine would: the game has then written its reply, and after the
    # winning guess also its last line, into the pipe at once. Everything is read through one buffered reader:
    # communicate() would read the pipe itself and miss what readline() had already buffered (once seen as
    # `assert 'episode won' in ''` under load).
    proc = subprocess.Popen([sys.executable, "-m", "envgym.cli", "play", "games/GuessNumber-v0", "--seed", "3",
                             "--split", "test", "--task", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hung game fails the test instead of hanging it
    watchdog.start()
    try:
        lo, hi = 1, 100
        lines = []
        for _ in range(8):
            guess = (lo + hi) // 2
            proc.stdin.write(f"{guess}\n")
            proc.stdin.flush()
            time.sleep(0.2)
            line = ""
            while "too low" not in line and "too high" not in line and "correct" not in line:
                line = proc.stdout.readline()
                assert line, f"the game ended before answering {guess}: {''.join(lines)}"
                lines.append(line)
            if "correct" in line:
                break
            lo, hi = (guess + 1, hi) if "too low" in line else (lo, guess - 1)
        proc.stdin.close()
        rest = proc.stdout.read()
        returncode = proc.wait()
    finally:
        watchdog.cancel()
    assert returncode == 0, "".join(lines) + rest
    assert "episode won" in rest
    assert "turn" in "".join(lines)


def test_parse_kwargs_reads_yaml_scalars():
    assert parse_kwargs(["size=7", "loops=0.5", "name=x", "flag=true"]) == {"size": 7, "loops": 0.5, "name": "x",
                                                                           "flag": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_kwargs(["size"])


def test_env_kwargs_and_config_overrides_share_one_parser(capsys):
    from envgym.trainers.config import ConfigError, config_from_dict

    assert parse_kwargs(["kwargs={size: 5}"]) == {"kwargs": {"size": 5}}
    with pytest.raises(ValueError, match=r"'size=\[': the value is not valid YAML \(.*expected the node content"):
        parse_kwargs(["size=["])
    with pytest.raises(ConfigError, match=r"override 'env.kwargs=\[': the value is not valid YAML \(.*expected"):
        config_from_dict({}, ["env.kwargs=["])
    assert main(["play", "games/Maze-v0", "size=["]) == EXIT_USAGE  # a message, not a traceback
    captured = capsys.readouterr()
    assert "not valid YAML" in captured.out + captured.err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "envgym.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("list", "info", "check", "play"):
        assert command in out.stdout


def test_a_run_stopped_on_nan_exits_one_with_its_message(monkeypatch, capsys):
    import envgym.cli as cli

    def stops_on_nan(args):
        raise FloatingPointError("iteration 3: loss is nan; the offending batch is saved in runs/x")

    monkeypatch.setattr(cli, "cmd_list", stops_on_nan)
    assert main(["list"]) == EXIT_FAILED
    assert "iteration 3: loss is nan" in capsys.readouterr().out


def test_a_knob_of_the_wrong_type_names_the_knob(capsys):
    assert main(["info", "games/Maze-v0", "size=banana"]) == EXIT_USAGE
    assert "games/Maze-v0: size must be an integer, got 'banana'" in capsys.readouterr().out


def _bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("iterations: 3\noptim:\n  lr: 1e-3\n   bad: 1\n")
    return str(path)


def _list_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    return str(path)


def _garbage_model(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{not json")
    return str(path)


QUICKSTART = "trainers/recipes/quickstart.yaml"


@pytest.mark.parametrize("argv, message", [
    (["info", "games/Maze-v0", "size=banana"], "size must be an integer, got 'banana'"),
    (["check", "games/Maze-v0", "--kwargs", "size=banana"], "size must be an integer, got 'banana'"),
    (["play", "games/Maze-v0", "size=banana"], "size must be an integer, got 'banana'"),
    (["train", "{bad_yaml}"], "bad.yaml:4:7: invalid YAML: mapping values are not allowed here"),
    (["train", "{list_yaml}"], "list.yaml: a config must be a mapping"),
    (["train", QUICKSTART, "optim.lr=-1"], "optim.lr must be in [0, 1], got -1.0"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "env.kwargs={{size: banana}}"],
     "size must be an integer, got 'banana'"),
    (["train", "{tmp}/missing.yaml"], "does not exist"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "rollout.backend=vllm"],
     "rollout.backend: vllm starts its engine from a checkpoint directory, and the model 'tiny-maze' has none"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "rollout.backend=vllm", "rollout.max_staleness=1"],
     "rollout.backend: vllm starts its engine from a checkpoint directory, and the model 'tiny-maze' has none"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "model.name={garbage_model}"],
     "model.name is '{garbage_model}', a directory AutoTokenizer cannot load from"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "model.name=envgym-tests/never-cached"],
     "model.name is 'envgym-tests/never-cached': not a local directory, not in the local Hugging Face cache, and "
     "the hub cannot be reached (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"),
    (["train", QUICKSTART, "out_dir={tmp}/run", "env.id=tools/MathPython-v0", "env.kwargs={{}}"],
     "model.name: the chat template of model 'tiny-maze' leaves the tools of tools/MathPython-v0 (python) out"),
    (["sft", QUICKSTART, "sft.steps=0"], "sft.steps is 0"),
    (["eval", "--env", "games/Maze-v0", "--policy", "hf:/nonexistent"], "there is no directory '/nonexistent'"),
    (["eval", "--env", "games/Maze-v0", "--policy", "scripted", "--env-kwarg", "size=banana"],
     "size must be an integer"),
    (["eval", "--env", "games/Maze-v0", "--policy", "scripted", "--out", "/proc/envgym"],
     "--out /proc/envgym: cannot write there"),
])
def test_expected_errors_are_one_line_and_exit_two(tmp_path, capsys, argv, message):
    paths = dict(bad_yaml=_bad_yaml(tmp_path), list_yaml=_list_yaml(tmp_path), garbage_model=_garbage_model(tmp_path),
                 tmp=tmp_path)
    argv, message = [a.format(**paths) for a in argv], message.format(**paths)
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and message in captured.out, captured.out  # nothing ran before it
    assert "Traceback" not in captured.err


def test_an_unwritable_out_fails_before_the_eval_runs(capsys):
    assert main(["eval", "--env", "games/Maze-v0", "--policy", "scripted", "--episodes", "500",
                 "--out", "/proc/envgym"]) == EXIT_USAGE
    assert "| env |" not in capsys.readouterr().out


def test_max_turns_zero_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--env", "games/Maze-v0", "--policy", "scripted", "--max-turns", "0"])
    assert exit_info.value.code == EXIT_USAGE
    assert "argument --max-turns: must be >= 1, got 0" in capsys.readouterr().err


def test_an_interrupted_command_exits_130_without_a_traceback(monkeypatch, capsys):
    import envgym.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().out == "envgym list: interrupted\n"
