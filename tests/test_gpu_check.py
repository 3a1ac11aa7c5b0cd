"""The GPU check script: its rows run at toy sizes on the CPU; without a GPU the real check says so."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_row_of_the_gpu_check_runs_at_toy_sizes_on_the_cpu():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("envgym GPU check on CPU"):]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| check", "| --"))]
    checks = [row.split("|")[1].strip() for row in rows]
    assert checks == ["advantages", "update", "train", "fsdp2"]
    assert "Triton = torch on gigpo, igpo, prime" in table
    assert "FAILED" not in table and "s/iteration" in table and "tokens/s" in table


def test_the_gpu_check_without_a_gpu_says_so_and_exits_2():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stdout and "--cpu" in proc.stdout
