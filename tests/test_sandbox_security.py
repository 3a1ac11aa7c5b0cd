"""Escape attempts against the isolating sandboxes (bubblewrap and Docker): each must fail, with a clear
status, and leave the host as it was."""

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from envgym.tools import ExecStatus, Limits, PythonSession, make_sandbox
from envgym.tools.bwrap_sandbox import bwrap_usable

from sandboxes import (assert_nothing_survives, open_sandbox, processes_with, sandbox_backends, sandbox_containers,
                       unique_sleep, wait_until)


@pytest.fixture(scope="module", params=sandbox_backends("bwrap", "docker"))
def sandbox(request):
    yield from open_sandbox(request)


@pytest.mark.skipif(bwrap_usable() is not None, reason=f"bubblewrap unusable: {bwrap_usable()}")
def test_auto_picks_bubblewrap():
    assert make_sandbox("auto").name == "bwrap"


_PRIVILEGES = ("status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
               "print(int(status['Uid'].split()[0]), status['CapEff'].strip(), status['NoNewPrivs'].strip())")


def test_runs_unprivileged(sandbox):
    result = sandbox.run(code=_PRIVILEGES, timeout=30)
    uid, capabilities, no_new_privs = result.stdout.split()
    assert int(uid) != 0 and capabilities == "0000000000000000" and no_new_privs == "1", result.render()


@pytest.mark.skipif(os.geteuid() != 0 or bwrap_usable() is not None, reason="bwrap as root")
def test_bwrap_without_user_namespaces_still_drops_to_a_fresh_uid():
    sandbox = make_sandbox("bwrap")
    sandbox.disables_userns = False  # bwrap runs as root; setpriv drops the uid inside
    result = sandbox.run(code=_PRIVILEGES, timeout=30)
    uid, capabilities, no_new_privs = result.stdout.split()
    assert int(uid) >= 1_000_000 and capabilities == "0000000000000000" and no_new_privs == "1", result.render()


def test_cannot_read_home_or_shadow(sandbox):
    with tempfile.TemporaryDirectory(dir=Path.home()) as secret_dir:
        secret = Path(secret_dir) / "secret.txt"
        secret.write_text("TOPSECRET")
        code = textwrap.dedent(f"""
            import os
            for path in [{str(secret)!r}, "/etc/shadow", {str(Path.home())!r}]:
                try:
                    print(path, "READ", open(path).read() if os.path.isfile(path) else os.listdir(path))
                except OSError as exc:
                    print(path, "denied", type(exc).__name__)
        """)
        result = sandbox.run(code=code, timeout=10)
    assert result.status is ExecStatus.OK, result.render()
    assert "READ" not in result.stdout and "TOPSECRET" not in result.stdout
    assert result.stdout.count("denied") == 3


def test_cannot_write_outside_its_tmp(sandbox, tmp_path):
    targets = [tmp_path / "escaped.txt", Path(__file__).parent / f"escaped-{uuid.uuid4().hex}.txt",
               Path("/etc") / f"escaped-{uuid.uuid4().hex}", Path("/usr") / f"escaped-{uuid.uuid4().hex}"]
    code = textwrap.dedent(f"""
        for path in {[str(t) for t in targets]!r}:
            try:
                open(path, "w").write("x")
                print(path, "WROTE")
            except OSError as exc:
                print(path, "denied", type(exc).__name__)
        open("/tmp/inside.txt", "w").write("fine")
        print("tmp ok", open("/tmp/inside.txt").read())
    """)
    result = sandbox.run(code=code, timeout=10)
    assert result.status is ExecStatus.OK, result.render()
    assert "WROTE" not in result.stdout and "tmp ok fine" in result.stdout
    assert not any(t.exists() for t in targets)


_FILL_EVERY_WRITABLE_PATH = """
import os
places = {line.split()[1] for line in open("/proc/self/mounts")}
places |= {"/", "/tmp", "/dev", "/dev/shm", "/dev/mqueue", "/run", "/var/tmp", "/var/lock", "/home", os.getcwd()}
chunk, written = b"x" * (64 << 10), {}
for place in sorted(places):
    for n in range(1000):  # files of at most RLIMIT_FSIZE each, until the place is full or refuses
        try:
            fd = os.open(os.path.join(place, f"fill-{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            break
        try:
            while True:
                written[place] = written.get(place, 0) + os.write(fd, chunk)
        except OSError as exc:
            os.close(fd)
            if exc.errno != 27:  # EFBIG: the next file may still fit; anything else: this place is done
                break
print(written)
"""


def test_every_writable_path_counts_against_the_tmp_cap(sandbox):
    # a program writes all it can through every mount it sees (and the usual scratch places): only /tmp takes
    # bytes, and no more than its cap, so a few sandboxes cannot fill the host's memory with tmpfs pages
    cap = 4 << 20
    result = sandbox.run(code=_FILL_EVERY_WRITABLE_PATH, timeout=60,
                         limits=Limits(tmp_bytes=cap, file_size_bytes=1 << 20, cpu_seconds=30))
    assert result.status is ExecStatus.OK, result.render()
    written = eval(result.stdout)  # a dict literal: path -> bytes
    assert set(written) == {"/tmp"}, f"writable outside /tmp: {written}"
    assert cap // 2 < written["/tmp"] <= cap, written


_REACH_INTO = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
target = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()

def outcome(ret):
    return "refused" if ret == -1 else f"ALLOWED ({ret})"

print("ptrace", outcome(libc.ptrace(16, target, 0, 0)))  # PTRACE_ATTACH
try:
    open(f"/proc/{target}/mem", "r+b").close()
    print("mem ALLOWED")
except OSError:
    print("mem refused")
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
iov = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
libc.process_vm_writev.restype = ctypes.c_ssize_t
ret = libc.process_vm_writev(target, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)
print("process_vm_writev", "refused" if ret == -1 and ctypes.get_errno() == 1 else f"ALLOWED ({ret})")
if "--no-kill" not in sys.argv:
    try:
        os.kill(target, signal.SIGKILL)
    except PermissionError:
        pass
print("target alive", os.path.exists(f"/proc/{target}"), flush=True)
"""


def test_a_program_cannot_reach_into_the_sandbox_init(sandbox):
    # pid 1 is the lifeline's shell (bwrap) or Docker's init: attaching, writing its memory or killing it fails
    result = sandbox.run(code=_REACH_INTO, timeout=20)
    assert result.status is ExecStatus.OK, result.render()
    assert "ALLOWED" not in result.stdout and result.stdout.count("refused") == 3, result.stdout
    assert "target alive True" in result.stdout


def test_a_snippet_cannot_reach_into_its_session_server(sandbox):
    # a session runs snippets in its server; a child of a snippet must not be able to rewrite the server
    # (killing it only ends the snippet's own session, which the host restarts: not tried here)
    with PythonSession(sandbox, timeout=20) as session:
        session.run(f"import os, subprocess, sys\nREACH = {_REACH_INTO!r}")
        result = session.run("print(subprocess.run([sys.executable, '-c', REACH, str(os.getpid()), '--no-kill'], "
                             "capture_output=True, text=True).stdout)")
    assert result.ok, result.render()
    assert "ALLOWED" not in result.stdout and result.stdout.count("refused") == 3, result.stdout


_ATTACKS_THEN_KILLED = """
import os
from envgym.tools import make_sandbox
box = make_sandbox(os.environ["KIND"])
proc = box.spawn([box.python, "-c", os.environ["REACH"] + os.environ["THEN"]])
for line in proc.popen.stdout:
    print(line.decode().strip(), flush=True)
"""


def test_the_lifeline_holds_after_a_program_attacked_init(sandbox):
    # after the attempts above, killing the caller still ends everything the program started
    marker = unique_sleep()
    caller = subprocess.Popen([sys.executable, "-c", _ATTACKS_THEN_KILLED], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "KIND": sandbox.name, "REACH": _REACH_INTO,
                                   "THEN": f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'], "
                                           "start_new_session=True)\nprint('ready', flush=True)\ntime.sleep(600)\n"})
    try:
        lines = [caller.stdout.readline().strip() for _ in range(5)]
        assert lines[-1] == "ready" and not any("ALLOWED" in line for line in lines), lines
        assert wait_until(lambda: processes_with(marker), 10)
    finally:
        caller.kill()
        caller.wait()
    assert_nothing_survives(marker, 15)
    assert_no_containers_of_other_owners(sandbox, 15)


def test_cannot_reach_a_host_port(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"
    result = sandbox.run(code=code, timeout=10)
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()
    assert result.status is ExecStatus.ERROR and "CONNECTED" not in result.stdout
    assert "Error" in result.stderr  # ConnectionRefusedError / OSError: Network is unreachable


@pytest.mark.parametrize("how", ["setsid", "nohup", "double_fork"])
def test_detached_children_die_with_the_call(sandbox, how):
    marker = unique_sleep()
    code = {
        "setsid": f"import subprocess; subprocess.Popen(['sleep', '{marker}'], start_new_session=True)",
        "nohup": f"import os; os.system('nohup setsid sleep {marker} > /dev/null 2>&1 &')",
        "double_fork": f"import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                       f"        os.execvp('sleep', ['sleep', '{marker}'])\n    os._exit(0)\nos.wait()",
    }[how]
    result = sandbox.run(code=code, timeout=10)
    assert result.status is ExecStatus.OK, result.render()
    assert_nothing_survives(marker)


def test_timeout_kills_everything_it_started(sandbox):
    marker = unique_sleep()
    code = f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\ntime.sleep(60)"
    started = time.monotonic()
    result = sandbox.run(code=code, timeout=1.0)
    assert time.monotonic() - started < 5
    assert result.status is ExecStatus.TIMEOUT and result.timed_out and result.exit_code is None
    assert_nothing_survives(marker)


def test_fork_bomb_is_capped_and_cleaned_up(sandbox):
    marker = unique_sleep()
    code = textwrap.dedent(f"""
        import os, time
        forks = 0
        while True:
            try:
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", "{marker}"])
                forks += 1
            except OSError:
                print("fork refused after", forks, flush=True)
                time.sleep(60)
    """)
    result = sandbox.run(code=code, timeout=1.5, limits=Limits(max_processes=8, cpu_seconds=2))
    assert result.status is ExecStatus.TIMEOUT
    assert "fork refused after" in result.stdout
    assert int(result.stdout.split()[-1]) < 8
    assert_nothing_survives(marker)


def test_memory_is_capped(sandbox):
    result = sandbox.run(code="chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))", timeout=20,
                         limits=Limits(memory_bytes=256 << 20))
    assert result.status is ExecStatus.MEMORY, result.render()
    assert "MemoryError" in result.stderr


def test_cpu_is_capped(sandbox):
    started = time.monotonic()
    result = sandbox.run(code="while True: pass", timeout=30, limits=Limits(cpu_seconds=1))
    assert result.status is ExecStatus.TIMEOUT and result.timed_out
    assert time.monotonic() - started < 10
    assert "CPU" in result.message


def test_output_flood_is_capped(sandbox):
    result = sandbox.run(code="while True:\n    print('x' * 10_000)", timeout=20,
                         limits=Limits(max_output_bytes=4096))
    assert result.status is ExecStatus.OUTPUT_LIMIT
    assert len(result.stdout) + len(result.stderr) <= 4096


def test_file_size_and_tmp_are_capped(sandbox):
    code = "open('/tmp/big', 'wb').write(b'x' * (8 << 20))"
    result = sandbox.run(code=code, timeout=10, limits=Limits(file_size_bytes=1 << 20))
    assert result.status is ExecStatus.ERROR
    assert "File too large" in result.stderr or "Errno 27" in result.stderr


def test_session_timeout_kills_its_children(sandbox):
    marker = unique_sleep()
    with PythonSession(sandbox, timeout=1.0) as session:
        assert session.run(f"import subprocess; subprocess.Popen(['sleep', '{marker}'], start_new_session=True)").ok
        # a fresh exec's cmdline can take a moment to show in /proc
        assert wait_until(lambda: processes_with(marker)), "the session's child should live while the session does"
        result = session.run("import time; time.sleep(60)")
        assert result.status is ExecStatus.TIMEOUT and "restarted" in result.message
        assert_nothing_survives(marker)


def test_cannot_create_user_namespaces(sandbox):
    # in a user namespace of its own the program could mount, e.g. a tmpfs that ignores the /tmp cap
    code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))")  # CLONE_NEWUSER
    result = sandbox.run(code=code, timeout=10)
    assert result.status is ExecStatus.OK, result.render()
    assert result.stdout.split()[0] == "-1", f"unshare(CLONE_NEWUSER) succeeded: {result.stdout}"



_KILLED_AT_SPAWN = """
import os, signal, time
from envgym.tools import make_sandbox
box = make_sandbox(os.environ["KIND"])
if os.environ.get("NO_USERNS"):
    box.disables_userns = False  # bwrap runs as root; setpriv drops the uid inside
box.spawn(["sleep", os.environ["MARKER"]])
time.sleep(float(os.environ.get("DELAY", 0)))
os.kill(os.getpid(), signal.SIGKILL)  # while bwrap may still be building the namespaces, or once it runs
"""


def test_nothing_survives_a_caller_killed_as_the_sandbox_starts(sandbox):
    # bwrap arms --die-with-parent only once its namespaces are built; the lifeline covers the moments before
    for _ in range(5):
        marker = unique_sleep()
        subprocess.run([sys.executable, "-c", _KILLED_AT_SPAWN], env={**os.environ, "KIND": sandbox.name,
                                                                        "MARKER": marker}, timeout=120)
        # in Docker the program may start after the caller died (`docker attach` still delivers its job), and
        # no process shows the marker until then: only once the caller's containers are gone can none appear
        assert_no_containers_of_other_owners(sandbox, 15)
        assert_nothing_survives(marker, 15)


@pytest.mark.skipif(os.geteuid() != 0 or bwrap_usable() is not None, reason="bwrap as root")
@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_nothing_survives_a_killed_caller_without_user_namespaces(delay):
    # there bwrap runs as root and the program as another uid: the sandbox's pid 1 must stay one bwrap can signal
    marker = unique_sleep()
    subprocess.run([sys.executable, "-c", _KILLED_AT_SPAWN], timeout=120,
                   env={**os.environ, "KIND": "bwrap", "MARKER": marker, "NO_USERNS": "1", "DELAY": str(delay)})
    assert_nothing_survives(marker, 15)


def assert_no_containers_of_other_owners(sandbox, seconds: float) -> None:
    """With Docker, wait until no sandbox container of another process (a killed caller's) is left."""
    if sandbox.name != "docker":
        return
    from envgym.tools.docker_sandbox import OWNER_LABEL

    def theirs():
        return [c for c in sandbox_containers(sandbox.client) if c["Labels"][OWNER_LABEL] != sandbox.owner]
    assert wait_until(lambda: not theirs(), seconds), f"containers of the killed caller survive: {theirs()}"


@pytest.mark.skipif(bwrap_usable() is not None, reason=f"bubblewrap unusable: {bwrap_usable()}")
def test_a_lifeline_that_cannot_be_opened_leaves_the_program_running():
    from envgym.tools.bwrap_sandbox import _on_lifeline

    with make_sandbox("bwrap") as box:  # fd 77 is open nowhere: the check's write fails to open, not with EPIPE
        result = box.run(_on_lifeline(77, ["sh", "-c", "sleep 0.5; echo alive"]), timeout=10)
    assert result.status is ExecStatus.OK and result.stdout == "alive\n", result.render()


@pytest.mark.skipif(bwrap_usable() is not None, reason=f"bubblewrap unusable: {bwrap_usable()}")
def test_a_caller_gone_before_the_sandbox_starts_never_starts_the_program(monkeypatch, tmp_path):
    import envgym.tools.bwrap_sandbox as bwrap_module

    def dead_caller() -> tuple[int, int]:  # the lifeline's read end already closed, as a killed caller's would be
        read_end, write_end = os.pipe()
        os.close(read_end)
        return os.open(os.devnull, os.O_RDONLY), write_end  # spawn closes this stand-in in the caller's place
    with make_sandbox("bwrap") as box:
        assert box.run(["sh", "-c", "echo started"], timeout=10).stdout == "started\n"
        monkeypatch.setattr(bwrap_module, "_lifeline_pipe", dead_caller)
        result = box.run(["sh", "-c", "echo started"], timeout=10)
    assert result.stdout == "" and result.exit_code == 1, result.render()


_KILLED_CALLER = """
import os, threading
from envgym.tools import PythonSession, make_sandbox
box = make_sandbox(os.environ["KIND"])
session = PythonSession(box, timeout=600)
session.run(f"import subprocess; subprocess.Popen(['sleep', '{os.environ['IN_SESSION']}'], start_new_session=True)")
threading.Thread(target=box.run, kwargs=dict(argv=["sleep", os.environ["IN_RUN"]], timeout=600), daemon=True).start()
print("ready", flush=True)
session.run("import time; time.sleep(600)")
"""


def test_nothing_survives_a_killed_caller(sandbox):
    in_session, in_run = unique_sleep(), unique_sleep()  # passed in the environment: no command line but theirs
    caller = subprocess.Popen([sys.executable, "-c", _KILLED_CALLER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "KIND": sandbox.name, "IN_SESSION": in_session,
                                              "IN_RUN": in_run})
    try:
        assert caller.stdout.readline() == "ready\n", caller.stderr.read()
        assert wait_until(lambda: processes_with(in_session) and processes_with(in_run), 30)
    finally:
        caller.kill()
        caller.wait()
    assert_nothing_survives(in_session, 15)
    assert_nothing_survives(in_run, 15)
    assert_no_containers_of_other_owners(sandbox, 15)
