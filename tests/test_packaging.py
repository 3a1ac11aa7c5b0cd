"""A wheel installs: every data file ships, and the installed package runs without the source tree."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_its_data_files(tmp_path):
    source = tmp_path / "source"  # setuptools builds in the tree it is given: keep the checkout clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "reports", "*.egg-info",
                                                                "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("envgym-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=120)
    # the dependencies come from this venv's site-packages as a plain path: its .pth files (among them the
    # editable install of the source tree) are not processed, so `import envgym` can only find the wheel
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    listed = subprocess.run([venv / "bin" / "envgym", "list"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "games/Wordle-v0" in listed.stdout and "tools/MathPython-v0" in listed.stdout
    check = ("import envgym, pathlib\n"
             "from envgym.trainers.config import load_config, recipes_dir\n"
             f"assert pathlib.Path(envgym.__file__).is_relative_to({str(venv)!r}), envgym.__file__\n"
             "env = envgym.make('games/Wordle-v0'); env.reset(seed=0)\n"
             "recipes = sorted(recipes_dir().glob('*.yaml'))\n"
             "assert len(recipes) >= 5, recipes\n"
             "for recipe in recipes: load_config(recipe)\n"
             "from envgym.tools.docker_image import DOCKERFILE_DIR\n"
             "assert (DOCKERFILE_DIR / 'Dockerfile').is_file(), DOCKERFILE_DIR\n"
             "print('ok', len(recipes))\n")
    ran = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ran.returncode == 0 and ran.stdout.startswith("ok"), ran.stdout + ran.stderr
