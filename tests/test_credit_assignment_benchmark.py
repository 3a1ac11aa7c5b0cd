"""benchmarks/credit_assignment.py: every suite's runs are valid configs, and its report reads runs back."""

import importlib.util
import json
from pathlib import Path

import pytest

from envgym.trainers import load_config
from envgym.trainers.config import recipes_dir
from envgym.trainers.trainer import check_env_options

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "credit_assignment.py"
spec = importlib.util.spec_from_file_location("credit_assignment", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("suite, estimator", [(s, e) for s, v in bench.SUITES.items() for e in v["estimators"]])
def test_every_run_of_every_suite_is_a_valid_config(suite, estimator):
    spec = bench.SUITES[suite]
    config = load_config(recipes_dir() / spec.get("recipe", "quickstart.yaml"),
                         [*spec.get("overrides", []), *spec["estimators"][estimator]])
    check_env_options(config.env)
    assert estimator.startswith(config.algorithm.estimator)


def test_report_only_reads_finished_runs_and_refuses_unfinished_ones(tmp_path):
    history = [{"iteration": 0, "phase": "init", "eval/success": 0.0},
               {"iteration": 0, "phase": "sft", "eval/success": 0.2},
               *({"iteration": i, "phase": "rl", "train/invalid_rate": 0.1 * i, "time/iteration": 2.0,
                  **({"eval/success": 0.3} if i % 5 == 0 else {})} for i in range(1, 11))]
    run = bench.run_dir(str(tmp_path), "maze", "grpo", 0)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in history))
    result = bench.load_run("maze", "grpo", 0, 5, str(tmp_path))
    assert result["curve"] == {0: 0.2, 5: 0.3} and result["initial"] == 0.0
    assert result["metrics"][3] == {"train/invalid_rate": pytest.approx(0.3)} and 6 not in result["metrics"]
    with pytest.raises(SystemExit, match="stops at iteration 10 of 20"):
        bench.load_run("maze", "grpo", 0, 20, str(tmp_path))


def test_the_per_seed_table_and_the_figure_show_every_estimator_and_seed(tmp_path, capsys):
    def result(initial, curve):
        return {"initial": initial, "curve": curve, "metrics": {}, "seconds": 1.0}

    results = {"grpo": [result(0.0, {0: 0.4, 10: 0.5}), result(0.0, {0: 0.3, 10: 0.35})],
               "gigpo": [result(0.0, {0: 0.4, 10: 0.6}), result(0.0, {0: 0.3, 10: 0.45})]}
    bench.print_per_seed(results, ["grpo", "gigpo"], [0, 1], 10)
    lines = capsys.readouterr().out.splitlines()
    assert "gain over the warm start" in lines[1]
    assert lines[2].split() == ["grpo", "seed", "0:", "0.00", "/", "0.40", "/", "0.50", "(+0.10)",
                                "seed", "1:", "0.00", "/", "0.30", "/", "0.35", "(+0.05)"]
    assert "(+0.20)" in lines[3] and "(+0.15)" in lines[3]
    path = bench.plot_curves(results, ["grpo", "gigpo"], "test", tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
