"""Tool-use envs: math with a Python sandbox, multi-hop search QA over a local corpus, code repair with tests."""

from envgym.registration import register

# Seconds of a step that runs the sandbox (measured here: 80-90 ms); EnvPool "auto" steps these in workers.
register("tools/MathPython-v0", "envgym.envs.tools.math_python:MathPython", max_turns=8, step_seconds=0.08,
         description="Integer math and word problems; a sandboxed python tool; answer in <answer>...</answer>.")
register("tools/SearchQA-v0", "envgym.envs.tools.search_qa:SearchQA", max_turns=10,
         description="Multi-hop questions over a generated corpus of fictional entities; search and open tools.")
register("tools/CodeRepair-v0", "envgym.envs.tools.code_repair:CodeRepair", max_turns=4, step_seconds=0.12,
         description="Fix a one-bug mutant of a small Python function; its unit tests run in a sandbox.")
