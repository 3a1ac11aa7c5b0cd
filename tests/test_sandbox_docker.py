"""The Docker sandbox. Engine tests skip where no Docker engine answers; the container configuration
and the in-container bootstrap are checked here anyway, with a fake client and the bwrap sandbox."""

import json

import pytest

from envgym.tools import ExecStatus, Limits, make_sandbox
from envgym.tools.docker_sandbox import _BOOTSTRAP, DockerSandbox, docker_problem
from envgym.tools.sandbox import bwrap_usable

class FakeContainer:
    def __init__(self, kwargs):
        self.kwargs, self.sent, self.removed, self.attrs = kwargs, b"", False, {"State": {"OOMKilled": False}}

    def attach_socket(self, params):
        return self

    def sendall(self, data):
        self.sent += data

    def close(self):
        pass

    def start(self):
        pass

    def wait(self, timeout):
        return {"StatusCode": 0}

    def logs(self, stdout, stderr, stream):
        return iter([b"out\n"] if stdout else [])

    def reload(self):
        pass

    def remove(self, force):
        self.removed = True


class FakeClient:
    def __init__(self):
        self.created = []
        self.images = self
        self.containers = self

    def get(self, image):
        return image

    def create(self, image, command, **kwargs):
        self.created.append(FakeContainer({"image": image, "command": command, **kwargs}))
        return self.created[-1]


def test_container_is_locked_down_labelled_and_removed():
    client = FakeClient()
    box = DockerSandbox(client=client, limits=Limits(max_processes=16, memory_bytes=256 << 20))
    result = box.run(code="print('out')", timeout=5)
    assert result.status is ExecStatus.OK and result.stdout == "out\n"
    container = client.created[-1]
    kw = container.kwargs
    assert kw["network_disabled"] and kw["read_only"] and kw["labels"] == {"envgym.sandbox": "1"}
    assert kw["pids_limit"] == 16 and kw["mem_limit"] == kw["memswap_limit"] == 256 << 20
    assert kw["cap_drop"] == ["ALL"] and "no-new-privileges" in kw["security_opt"] and "/tmp" in kw["tmpfs"]
    assert container.removed


def test_warm_pool_hands_out_precreated_containers():
    client = FakeClient()
    box = DockerSandbox(client=client, warm_pool=2)
    assert len(client.created) == 2
    first = client.created[0:2]
    box.run(code="pass", timeout=5)
    assert any(c.removed for c in first)
    box.close()
    assert all(c.removed for c in client.created[:2])


@pytest.mark.skipif(bwrap_usable() is not None, reason=str(bwrap_usable()))
def test_bootstrap_writes_files_and_execs_the_program():
    client = FakeClient()
    DockerSandbox(client=client).run(code="import sys; print(open('d.txt').read(), sys.stdin.read())",
                                     files={"d.txt": "file"}, stdin="stdin", timeout=5)
    payload = client.created[-1].sent
    header = json.loads(payload[8:8 + int.from_bytes(payload[:8], "big")])
    assert header["argv"][-1] == "main.py" and set(header["files"]) == {"main.py", "d.txt"}
    ran = make_sandbox("bwrap").run(["/usr/bin/python3", "-c", _BOOTSTRAP], stdin=payload, timeout=10)
    assert ran.status is ExecStatus.OK and ran.stdout == "file stdin\n"


@pytest.fixture(scope="module")
def sandbox():
    from envgym.tools.docker_sandbox import DockerSandbox

    with DockerSandbox(warm_pool=1) as box:
        yield box


@pytest.mark.docker
@pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))
def test_runs_code_with_files_and_stdin(sandbox):
    result = sandbox.run(code="import sys; print(sys.stdin.read(), open('d.txt').read())", stdin="hi",
                         files={"d.txt": "there"}, timeout=60)
    assert result.status is ExecStatus.OK and result.stdout == "hi there\n"


@pytest.mark.docker
@pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))
def test_no_network_and_read_only_root(sandbox):
    code = ("import socket, os\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('NET')\n"
            "except OSError:\n    print('no net')\ntry:\n    open('/etc/x', 'w')\nexcept OSError:\n    print('ro')\n"
            "print(os.getuid())")
    result = sandbox.run(code=code, timeout=60)
    assert result.stdout.split() == ["no", "net", "ro", "10001"]


@pytest.mark.docker
@pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))
def test_timeout_memory_and_output_caps(sandbox):
    assert sandbox.run(code="import time; time.sleep(30)", timeout=2).status is ExecStatus.TIMEOUT
    big = sandbox.run(code="x = bytearray(1 << 30)", timeout=60, limits=Limits(memory_bytes=128 << 20))
    assert big.status is ExecStatus.MEMORY
    flood = sandbox.run(code="print('x' * 100_000)", timeout=60, limits=Limits(max_output_bytes=1000))
    assert flood.status is ExecStatus.OUTPUT_LIMIT


@pytest.mark.docker
@pytest.mark.skipif(docker_problem() is not None, reason=str(docker_problem()))
def test_containers_are_removed(sandbox):
    sandbox.run(code="pass", timeout=60)
    leftovers = sandbox.client.containers.list(all=True, filters={"label": "envgym.sandbox=1"})
    assert len(leftovers) <= sandbox.warm_pool
