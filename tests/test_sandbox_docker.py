"""What only the Docker sandbox has: its container configuration and bootstrap, sessions in containers,
the warm pool, labels and cleanup, the offline image and its cache, and the private engine of the tests.
The behaviour it shares with bubblewrap is tested on both in test_sandbox.py and test_sandbox_security.py."""

import io
import os
import shutil
import socket

import pytest

from envgym.tools import ExecStatus, Limits, PythonSession, make_sandbox
from envgym.tools.docker_sandbox import (
    _BOOTSTRAP,
    LABEL,
    OWNER_LABEL,
    bootstrap_job,
    container_config,
)
from envgym.tools.bwrap_sandbox import bwrap_usable

from sandboxes import sandbox_containers, wait_until


def test_container_is_locked_down_and_labelled():
    kw = container_config("img", "python3", Limits(max_processes=16, memory_bytes=256 << 20, tmp_bytes=1 << 20),
                          cpus=0.5, owner="abc")
    assert kw["network_mode"] == "none" and kw["read_only"] and kw["init"]
    assert kw["labels"] == {**LABEL, OWNER_LABEL: "abc"}
    assert kw["pids_limit"] == 16 and kw["mem_limit"] == kw["memswap_limit"] == 256 << 20
    assert kw["nano_cpus"] == 500_000_000 and kw["tmpfs"] == {"/tmp": "size=1048576,mode=1777"}
    assert kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges"]
    # init and bootstrap run as root with only what dropping to the program's uid takes; no /dev/shm
    assert kw["user"] == "0:0" and kw["cap_add"] == ["SETUID", "SETGID"] and kw["ipc_mode"] == "none"


@pytest.mark.skipif(bwrap_usable() is not None, reason=str(bwrap_usable()))
def test_bootstrap_writes_files_sets_rlimits_and_execs_the_program():
    code = ("import os, resource, sys\nprint(open('d.txt').read(), sys.stdin.read(), os.environ['K'],"
            " resource.getrlimit(resource.RLIMIT_AS)[0], oct(os.stat('d.txt').st_mode & 0o777))")
    job = bootstrap_job(["/usr/bin/python3", "-c", code], {"d.txt": "file"}, Limits(memory_bytes=300 << 20),
                        {"K": "v"})
    ran = make_sandbox("bwrap").run(["/usr/bin/python3", "-c", _BOOTSTRAP], stdin=job + b"stdin", timeout=10)
    assert ran.status is ExecStatus.OK, ran.render()
    assert ran.stdout.split() == ["file", "stdin", "v", str(300 << 20), "0o444"]


@pytest.fixture(scope="module")
def sandbox(docker_engine):
    from envgym.tools.docker_sandbox import DockerSandbox

    with DockerSandbox() as box:
        yield box


def owned(sandbox) -> list[dict]:
    """The containers `sandbox`'s process owns in the engine."""
    return sandbox_containers(sandbox.client, sandbox.owner)


@pytest.mark.docker
def test_runs_as_an_unprivileged_user_in_a_read_only_container(sandbox):
    code = ("import os\ntry:\n    open('/etc/x', 'w')\nexcept OSError as exc:\n    print(type(exc).__name__)\n"
            "print(os.getuid(), os.getcwd(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    result = sandbox.run(code=code, timeout=30)
    assert result.stdout.split() == ["OSError", "10001", "/tmp", "0000000000000000"], result.render()


@pytest.mark.docker
def test_session_lives_in_one_container_and_gets_a_new_one_after_a_timeout(sandbox):
    with PythonSession(sandbox, timeout=2) as session:
        first = session.run("import socket; socket.gethostname()").stdout
        assert session.run("socket.gethostname()").stdout == first
        [container] = owned(sandbox)
        assert container["Labels"]["envgym.sandbox"] == "1" and first == repr(container["Id"][:12]) + "\n"
        assert session.run("import time; time.sleep(30)").status is ExecStatus.TIMEOUT
        assert session.run("import socket; socket.gethostname()").stdout != first
        assert len(owned(sandbox)) == 1
    assert owned(sandbox) == []


@pytest.mark.docker
def test_out_of_memory_kill_is_reported(sandbox):
    # tmpfs pages count against the container's memory cgroup and cannot be swapped: the OOM killer ends it
    limits = Limits(memory_bytes=64 << 20, tmp_bytes=512 << 20, file_size_bytes=512 << 20)
    code = "with open('/tmp/fill', 'wb') as f:\n    for _ in range(256):\n        f.write(b'x' * (1 << 20))"
    result = sandbox.run(code=code, timeout=60, limits=limits)
    assert result.status is ExecStatus.MEMORY and "out of memory" in result.message, result.render()


@pytest.mark.docker
def test_warm_pool_keeps_started_containers_and_close_removes_them(docker_engine):
    from envgym.tools.docker_sandbox import DockerSandbox

    box = DockerSandbox(warm_pool=2)
    try:
        assert [c["State"] for c in owned(box)] == ["running", "running"]
        assert box.run(code="print('pooled')", timeout=30).stdout == "pooled\n"
        assert wait_until(lambda: len(owned(box)) == 2, 30), "the pool was not refilled"
        other = box.run(code="print('fresh')", timeout=30, limits=Limits(memory_bytes=128 << 20))
        assert other.stdout == "fresh\n"  # other container limits: a container of its own, not the pool's
    finally:
        box.close()
    assert owned(box) == []


@pytest.mark.docker
def test_no_container_survives_its_call(sandbox):
    sandbox.run(code="print(1)", timeout=30)
    sandbox.run(code="import time; time.sleep(30)", timeout=1)
    sandbox.run(code="while True: print('x' * 1000)", timeout=30, limits=Limits(max_output_bytes=1000))
    sandbox.run(["no-such-program"], timeout=30)
    with PythonSession(sandbox, timeout=1) as session:
        session.run("import os; os._exit(3)")
        session.run("1")
    assert owned(sandbox) == []


@pytest.mark.docker
def test_a_missing_program_is_an_error_with_its_name(sandbox):
    result = sandbox.run(["no-such-program"], timeout=30)
    assert result.status is ExecStatus.ERROR and "no-such-program" in result.stderr


@pytest.mark.docker
def test_auto_picks_docker_where_bubblewrap_is_unusable(docker_engine, monkeypatch):
    import envgym.tools.bwrap_sandbox as bwrap_module

    monkeypatch.setattr(bwrap_module, "bwrap_usable", lambda: "not here")
    with make_sandbox("auto") as box:
        assert box.name == "docker"


@pytest.mark.docker
def test_image_is_cached_and_rebuilt_only_when_its_inputs_change(docker_engine, tmp_path, monkeypatch):
    from envgym.tools import docker_image
    from envgym.tools.docker_sandbox import engine_client

    client = engine_client()
    tag = docker_image.ensure_image(client)
    built = client.images.get(tag).id
    log = io.StringIO()
    assert docker_image.ensure_image(client, log=log) == tag and client.images.get(tag).id == built
    assert "building" not in log.getvalue(), "an unchanged image was rebuilt"

    changed = tmp_path / "python-sandbox"
    shutil.copytree(docker_image.DOCKERFILE_DIR, changed)
    (changed / "Dockerfile").write_text((changed / "Dockerfile").read_text() + "ENV ENVGYM_TEST_CHANGE=1\n")
    monkeypatch.setattr(docker_image, "DOCKERFILE_DIR", changed)
    new_tag = docker_image.ensure_image(client)  # offline: FROM the cached Debian base
    assert new_tag != tag and "ENVGYM_TEST_CHANGE=1" in client.images.get(new_tag).attrs["Config"]["Env"]

    named_base = docker_image.ensure_image(client, base="envgym/debian-python:bookworm")  # the build argument
    assert named_base not in (tag, new_tag)
    for extra in (new_tag, named_base):
        client.images.remove(extra)

    monkeypatch.setitem(docker_image.ROOTFS_RECIPE, "include", "python3,curl")
    assert docker_image.image_tag() != new_tag  # a new base recipe means a new image


@pytest.mark.docker
def test_private_engine_leaves_nothing_behind(docker_engine):
    from envgym.tools.docker_engine import PrivateDockerd
    from envgym.tools.docker_sandbox import engine_client

    with PrivateDockerd(keep_images=False) as engine:
        root = engine.root
        assert engine.data_root == root / "data"
        client = engine_client(engine.host)
        assert client.info()["ServerVersion"] and client.networks.list(names=["bridge"]) == []
        pids = [int((root / "dockerd.pid").read_text())]
    assert not root.exists()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    with pytest.raises(OSError):
        socket.socket(socket.AF_UNIX).connect(str(root / "docker.sock"))
