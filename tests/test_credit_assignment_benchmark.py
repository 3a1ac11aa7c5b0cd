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
    config = load_config(recipes_dir() / "quickstart.yaml", [*spec["overrides"], *spec["estimators"][estimator]])
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
    assert result["curve"] == {0: 0.2, 5: 0.3}
    assert result["metrics"][3] == {"train/invalid_rate": pytest.approx(0.3)} and 6 not in result["metrics"]
    with pytest.raises(SystemExit, match="stops at iteration 10 of 20"):
        bench.load_run("maze", "grpo", 0, 20, str(tmp_path))
