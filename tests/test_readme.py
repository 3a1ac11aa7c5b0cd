"""The README's code stays true: its register-your-own-env example runs and passes the checker."""

import re
from pathlib import Path

import gymnasium

import envgym
from envgym import registration

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_register_example_passes_the_checker():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "envgym.register(" in b and "class " in b)
    assert len([line for line in example.splitlines() if line.strip() and not line.startswith("import")]) <= 15
    namespace: dict = {}
    try:
        exec(compile(example, "README.md", "exec"), namespace)
        report = envgym.check_env("mine/Countdown-v0")
        assert report.ok, report.render()
    finally:
        registration._registry.pop("mine/Countdown-v0", None)
        gymnasium.registry.pop("mine/Countdown-v0", None)
