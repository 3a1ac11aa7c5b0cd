"""`envgym serve` against OpenEnv's own client, and remote envs (`openenv:URL`) through check, pool, train and
eval; servers that are down, answer garbage or hang fail episodes with their cause, never a hang."""

import asyncio
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core: pip install 'envgym[openenv]'")

from openenv.core import GenericEnvClient  # noqa: E402

import envgym  # noqa: E402
from envgym.cli import main  # noqa: E402
from envgym.pool import EnvPool  # noqa: E402
from envgym.remote import RemoteEnvError  # noqa: E402
from envgym.trainers import Trainer, config_from_dict  # noqa: E402
from envgym.trainers.trainer import RolloutFailed  # noqa: E402

#: A served env registered only in the server's process (as a plugin's would be): GuessNumber that raises on
#: "explode". The server runs the real `envgym serve` command.
SERVER = ("import sys, envgym\n"
          "envgym.register('openenv-test/ExplodingGuess-v0', 'faulty_envs:RaisesOnExplode', max_turns=10)\n"
          "from envgym.cli import main\n"
          "sys.exit(main(['serve', 'openenv-test/ExplodingGuess-v0', 'low=1', 'high=16', *sys.argv[1:]]))\n")
LOCAL = ("games/GuessNumber-v0", {"low": 1, "high": 16})  # the same env, in process

GUESS = {"iterations": 1, "threads": 1, "model": {"name": "tiny-guess"}, "env": {"id": None, "max_turns": 3},
         "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0,
                     "pool": "sync", "step_timeout": 10.0, "retries": 1},
         "optim": {"epochs": 1}, "eval": {"every": 1, "episodes": 2}, "checkpoint": {"every": 1}}


def start_server(*args):
    """A running `envgym serve` on 127.0.0.1 (a free port) and its base URL."""
    process = subprocess.Popen([sys.executable, "-c", SERVER, "--port", "0", *args], stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).parent)
    line = process.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if match is None:
        process.kill()
        raise AssertionError(f"envgym serve did not start: {line!r}")
    return process, match.group(1)


def stop(process):
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    process, url = start_server("--max-sessions", "6")
    yield url
    stop(process)


def generic_client(url):
    """OpenEnv's own client, unchanged, in its synchronous form."""
    return GenericEnvClient(base_url=url, message_timeout_s=30).sync()


def test_openenv_client_plays_an_episode_with_seed_split_and_task(server):
    local = envgym.make(LOCAL[0], **LOCAL[1])
    expected_obs, expected_info = local.reset(seed=3, options={"split": "test", "task": 1})
    expected_step = local.step("8")
    with generic_client(server) as client:
        result = client.reset(seed=3, split="test", task=1)
        assert result.observation["text"] == expected_obs and result.observation["info"] == expected_info
        assert (result.observation["split"], result.observation["task"]) == ("test", 1)
        assert result.observation["instructions"] == local.unwrapped.instructions
        result = client.step({"message": "8"})
        assert result.observation["text"] == expected_step[0] and result.reward == expected_step[1]
        assert result.observation["info"] == expected_step[4] and result.done is False
        state = client.state()
        assert state["num_tasks"] == {"train": 14, "test": 2} and state["step_count"] == 1
        assert state["state_key"] == expected_step[4]["state_key"]


def test_an_env_that_raises_fails_its_session_only(server):
    with generic_client(server) as failing, generic_client(server) as other:
        failing.reset(seed=0)
        other.reset(seed=0)
        with pytest.raises(RuntimeError, match=r"env failed: step\('explode'\) raised RuntimeError: the simulator "
                                               r"exploded \(code: EXECUTION_ERROR\)"):
            failing.step({"message": "explode"})
        assert other.step({"message": "8"}).observation["info"]["state_key"] == "9-16"
        assert failing.reset(seed=0).observation["info"]["state_key"] == "1-16"  # the session goes on


def test_concurrent_sessions_are_independent(server):
    async def episode(task):
        async with GenericEnvClient(base_url=server) as client:
            await client.reset(seed=0, split="train", task=task)
            keys = []
            for guess in ("8", "12", "4"):
                keys.append((await client.step({"message": guess})).observation["info"]["state_key"])
            return keys

    async def both():
        return await asyncio.gather(*(episode(task) for task in (0, 5, 0)))

    first, other, again = asyncio.run(both())
    assert first == again != other


def post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_requests_get_a_4xx_with_the_reason(server):
    status, body = post(f"{server}/reset", {"split": "validation"})
    assert status == 400 and "unknown split 'validation'; this env has splits ['test', 'train']" in body["detail"]
    status, body = post(f"{server}/reset", {"seed": 1, "difficulty": 3})
    assert status == 400 and "unknown reset field(s) ['difficulty']" in body["detail"]
    status, body = post(f"{server}/step", {"action": {"message": "8"}})
    assert status == 400 and "step before reset" in body["detail"]
    status, body = post(f"{server}/step", {"action": {"message": 8}})
    assert status == 422 and body["detail"][0]["loc"][-1] == "message"
    status, body = post(f"{server}/reset", {"seed": 0, "split": "test", "task": 1})
    assert status == 200 and body["observation"]["task"] == 1
    with generic_client(server) as client, pytest.raises(RuntimeError, match="bad request: task must be an int"):
        client.reset(split="test", task=7)


def test_remote_env_passes_the_checker_like_the_local_one(server):
    remote, local = envgym.check_env(f"openenv:{server}"), envgym.check_env(LOCAL[0], **LOCAL[1])
    assert remote.ok, remote.render()
    assert [r.name for r in remote.results] == [r.name for r in local.results]
    assert "keys equal across processes" in next(r.detail for r in remote.results if r.name == "state keys")


def test_remote_env_plays_like_the_local_one_in_a_pool(server):
    requests = {slot: (slot, {"split": "train", "task": slot}) for slot in range(3)}
    transcripts = []
    for env_id, kwargs in ((f"openenv:{server}", {}), LOCAL):
        with EnvPool(env_id, 3, make_kwargs=kwargs) as pool:
            results = [pool.reset(requests)]
            results += [pool.step(dict.fromkeys(range(3), guess)) for guess in ("8", "x", "12")]
        transcripts.append([[(r.observation, r.reward, r.done, r.info, r.error) for r in step.values()]
                            for step in results])
    assert transcripts[0] == transcripts[1]


@pytest.mark.slow
def test_train_one_iteration_and_eval_against_a_served_env(server, tmp_path):
    import yaml

    recipe = tmp_path / "remote.yaml"
    recipe.write_text(yaml.safe_dump({**GUESS, "out_dir": str(tmp_path / "run"),
                                      "env": {**GUESS["env"], "id": f"openenv:{server}"}}))
    assert main(["train", str(recipe)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = next(m for m in metrics if m["phase"] == "rl")
    assert trained["train/episodes"] == 4 and trained["rollout/dropped_groups"] == 0
    assert trained["eval/episodes"] == 2 and trained["eval/dropped_episodes"] == 0
    assert main(["eval", "--env", f"openenv:{server}", "--policy", "random", "--episodes", "2"]) == 0


def test_options_the_remote_env_does_not_take_are_named():
    with pytest.raises(TypeError, match=r"takes no option\(s\) \['high'\]; its one option is timeout"):
        envgym.make("openenv:http://127.0.0.1:1", high=16)
    with pytest.raises(ValueError, match="url must look like http://HOST:PORT, got 'localhost:8000'"):
        envgym.make("openenv:localhost:8000")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GarbageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello, I am not an env server")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bad_servers():
    """URLs of a port nobody listens on, an HTTP server answering garbage, and a socket that never answers."""
    garbage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GarbageHandler)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) and never answers
    yield {"down": f"http://127.0.0.1:{free_port()}", "garbage": f"http://127.0.0.1:{garbage.server_port}",
           "silent": f"http://127.0.0.1:{silent.getsockname()[1]}"}
    garbage.shutdown()
    silent.close()


@pytest.mark.parametrize("kind, cause", [
    ("down", "cannot open a session on the env server ws://127.0.0.1:\\d+/ws: ConnectionRefusedError"),
    ("garbage", "cannot open a session on the env server .*: InvalidMessage: did not receive a valid HTTP"),
    ("silent", "cannot open a session on the env server .*: TimeoutError.*is `envgym serve` running there"),
])
def test_a_server_down_or_answering_garbage_fails_with_its_cause(bad_servers, kind, cause):
    env = envgym.make(f"openenv:{bad_servers[kind]}", timeout=0.5)
    with pytest.raises(RemoteEnvError, match=cause):
        env.reset(seed=0)


STATE = {"type": "state", "data": {"instructions": "Say hi.", "action_format": "hi", "num_tasks": {"train": 1,
                                                                                                  "test": 1},
                                    "reset_options": []}}
RESET = {"type": "observation", "data": {"observation": {"text": "hello", "info": {"state_key": "0"}, "split": "train",
                                                         "task": 0, "instructions": "Say hi."}, "reward": None}}


def nonsense(connection):
    for _ in connection:
        connection.send("{not json")


def stops_answering_steps(connection):
    for raw in connection:
        kind = json.loads(raw)["type"]
        if kind != "step":
            connection.send(json.dumps(STATE if kind == "state" else RESET))


@pytest.mark.parametrize("handler, cause", [
    (nonsense, r"answered state with something that is not an OpenEnv message: '\{not json'"),
    (stops_answering_steps, r"did not answer step within 0.5 s \(the env's timeout option\)"),
])
def test_a_websocket_server_answering_garbage_or_nothing_fails_with_its_cause(handler, cause):
    from websockets.sync.server import serve

    with serve(handler, "127.0.0.1", 0) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        env = envgym.make(f"openenv:http://127.0.0.1:{ws_server.socket.getsockname()[1]}", timeout=0.5)
        with pytest.raises(RemoteEnvError, match=cause):
            env.reset(seed=0)
            env.step("hi")
        env.close()
        ws_server.shutdown()


def remote_trainer(tmp_path, url):
    return Trainer(config_from_dict({**GUESS, "out_dir": str(tmp_path / "run"),
                                     "env": {**GUESS["env"], "id": f"openenv:{url}"}}))


@pytest.mark.slow
def test_a_server_that_goes_down_fails_episodes_which_are_retried_then_dropped(tmp_path, bad_servers):
    with pytest.raises(RemoteEnvError, match="ConnectionRefusedError"):  # down from the start: the run cannot set up
        remote_trainer(tmp_path, bad_servers["down"])
    process, url = start_server()
    run = remote_trainer(tmp_path, url)
    try:
        stop(process)  # the server dies between set-up and the first rollout
        with pytest.raises(RolloutFailed, match="every group of openenv:.* failed past its 1 retries") as info:
            run.train_iteration()
        assert "cannot open a session on the env server" in str(info.value)
    finally:
        run.close()


def test_a_full_server_says_so(server):
    envs = [envgym.make(f"openenv:{server}") for _ in range(7)]
    try:
        for env in envs[:6]:
            env.reset(seed=0)
        with pytest.raises(RemoteEnvError, match="CAPACITY_REACHED"):
            envs[6].reset(seed=0)
    finally:
        for env in envs:
            env.close()


def open_sessions(url):
    with urllib.request.urlopen(f"{url}/envgym/sessions", timeout=30) as response:
        return json.loads(response.read())["active_sessions"]


@pytest.mark.slow
def test_an_idle_session_is_closed_and_the_next_reset_opens_another():
    process, url = start_server("--idle-timeout", "1")
    try:
        idle = envgym.make(f"openenv:{url}")
        idle.reset(seed=0)
        assert open_sessions(url) == 1
        while open_sessions(url):  # until the server's reaper (it looks every 5 s) closes the idle session
            time.sleep(0.2)
        with pytest.raises(RemoteEnvError, match="session closed: it was idle past the server's --idle-timeout"):
            idle.step("8")
        assert idle.reset(seed=0)[1]["state_key"] == "1-16"  # in a new session
        assert open_sessions(url) == 1
        idle.close()
    finally:
        stop(process)


def test_serve_rejects_bad_input_with_one_line(capsys):
    assert main(["serve", "games/NoSuchEnv-v0"]) == 2
    assert main(["serve", "games/GuessNumber-v0", "--max-sessions", "0"]) == 2
    assert main(["serve", "games/GuessNumber-v0", "size=3"]) == 2
    out = capsys.readouterr().out
    assert "unknown env id 'games/NoSuchEnv-v0'" in out and "--max-sessions must be >= 1, got 0" in out
    assert "takes no option 'size'" in out and "Traceback" not in out
