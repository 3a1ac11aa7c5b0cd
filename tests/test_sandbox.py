"""The sandbox interface on every backend available here, and the Python executor and session."""

import textwrap
import time
import warnings

import pytest

from envgym.tools import (
    ExecStatus,
    Limits,
    PythonExecutor,
    PythonSession,
    SubprocessSandbox,
    make_sandbox,
    python_tool,
)
from envgym.tools.bwrap_sandbox import bwrap_usable

from sandboxes import open_sandbox, sandbox_backends


@pytest.fixture(scope="module", params=sandbox_backends("bwrap", "docker", "subprocess"))
def sandbox(request):
    yield from open_sandbox(request)


def test_runs_code_with_stdin_and_files(sandbox):
    code = "import sys\nprint(sys.stdin.read().upper())\nprint(open('data.txt').read())\nimport helper\nprint(helper.X)"
    result = sandbox.run(code=code, stdin="hello", files={"data.txt": "payload", "helper.py": "X = 42"}, timeout=10)
    assert result.status is ExecStatus.OK and result.exit_code == 0 and not result.timed_out
    assert result.stdout.split() == ["HELLO", "payload", "42"]


def test_runs_argv(sandbox):
    result = sandbox.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.stdout, result.stderr, result.exit_code, result.status) == ("out\n", "err\n", 3, ExecStatus.ERROR)


def test_exception_is_an_error_with_traceback(sandbox):
    result = sandbox.run(code="raise ValueError('boom')", timeout=10)
    assert result.status is ExecStatus.ERROR and "ValueError: boom" in result.stderr
    assert "ValueError: boom" in result.render()


def test_timeout(sandbox):
    started = time.monotonic()
    result = sandbox.run(code="import time; time.sleep(30)", timeout=0.5)
    assert result.status is ExecStatus.TIMEOUT and result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 3


def test_output_cap(sandbox):
    result = sandbox.run(code="print('y' * 100_000)", timeout=10, limits=Limits(max_output_bytes=1000))
    assert result.status is ExecStatus.OUTPUT_LIMIT and len(result.stdout) == 1000


def test_memory_limit(sandbox):
    result = sandbox.run(code="x = bytearray(1 << 30)", timeout=10, limits=Limits(memory_bytes=256 << 20))
    assert result.status is ExecStatus.MEMORY


def test_bad_arguments_raise_clear_errors(sandbox):
    with pytest.raises(ValueError, match="exactly one of argv"):
        sandbox.run(timeout=1)
    with pytest.raises(ValueError, match="timeout"):
        sandbox.run(code="pass", timeout=0)
    with pytest.raises(ValueError, match="plain name"):
        sandbox.run(code="pass", files={"../escape.py": ""})
    with pytest.raises(TypeError, match="sequence of str"):
        sandbox.run("ls -l")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_seconds"):
        Limits(cpu_seconds=0)


def test_make_sandbox_kinds():
    with pytest.raises(ValueError, match="unknown sandbox kind 'vm'"):
        make_sandbox("vm")
    if bwrap_usable() is None:
        assert make_sandbox("auto").name == "bwrap"


def test_subprocess_sandbox_warns_once():
    SubprocessSandbox._warned = False
    with pytest.warns(UserWarning, match="does not isolate"):
        SubprocessSandbox()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SubprocessSandbox()


def test_executor_is_stateless(sandbox):
    executor = PythonExecutor(sandbox, timeout=10)
    assert executor.run("x = 1\nprint(x)").stdout == "1\n"
    assert "NameError" in executor.run("print(x)").stderr


@pytest.fixture
def session(sandbox):
    with PythonSession(sandbox, timeout=2) as s:
        yield s


def test_session_keeps_state_and_echoes_last_expression(session):
    assert session.run("x = 20").stdout == ""
    assert session.run("x += 1\nx * 2").stdout == "42\n"
    assert session.run("print('a'); import os; os.system('echo from-child')").stdout == "a\nfrom-child\n0\n"


def test_session_reports_errors_and_keeps_going(session):
    session.run("y = 5")
    failed = session.run("1 / 0")
    assert failed.status is ExecStatus.ERROR and "ZeroDivisionError" in failed.stderr and "<cell" in failed.stderr
    assert session.run("y").stdout == "5\n"
    assert "SyntaxError" in session.run("def f(:").stderr


def test_session_timeout_restarts_it(session):
    session.run("z = 1")
    result = session.run("while True: pass")
    assert result.status is ExecStatus.TIMEOUT and result.timed_out and "restarted" in result.message
    assert "NameError" in session.run("z").stderr  # a fresh interpreter
    assert session.run("1 + 1").stdout == "2\n"


def test_session_survives_the_interpreter_dying(session):
    result = session.run("import os; os._exit(7)")
    assert result.status is ExecStatus.ERROR and result.exit_code == 7 and "restarted" in result.message
    assert session.run("3").stdout == "3\n"


def test_session_output_is_capped(sandbox):
    with PythonSession(sandbox, timeout=5, limits=Limits(max_output_bytes=2000)) as s:
        result = s.run("print('q' * 50_000)")
        assert result.status is ExecStatus.OUTPUT_LIMIT and len(result.stdout) <= 2000
        assert s.run("'still alive'").stdout == "'still alive'\n"


def test_python_tool_renders_results(sandbox):
    tool = python_tool(PythonExecutor(sandbox, timeout=10))
    assert tool.schema()["function"]["name"] == "python"
    out = tool.function(code="print(6 * 7)")
    assert out.startswith("[ok, exit code 0]") and "42" in out


# Code in a session runs in the session server's process, so it can find the reply pipe and write to it.
_REPLY_PIPE = textwrap.dedent("""
    import fcntl, os, stat
    def reply_pipe():
        for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
            try:
                if (fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode)
                        and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY):
                    return fd
            except OSError:
                pass
    def send(message):
        body = json.dumps(message).encode()
        os.write(reply_pipe(), len(body).to_bytes(8, "big") + body)
    import json
""")


def assert_broke_the_protocol(result, session, started: float) -> None:
    assert time.monotonic() - started < session.timeout + 3, "the call outlived its timeout"
    assert result.status is ExecStatus.KILLED, result.render()
    assert "protocol" in result.message and "restarted" in result.message


@pytest.mark.timeout(60)  # before the fix this call never returned
def test_session_survives_a_bogus_length_header(session):
    session.run("x = 1")
    started = time.monotonic()
    result = session.run(_REPLY_PIPE + "os.write(reply_pipe(), (1 << 60).to_bytes(8, 'big'))\n"
                                       "import time; time.sleep(600)")
    assert_broke_the_protocol(result, session, started)
    assert "NameError" in session.run("x").stderr  # a fresh interpreter
    assert session.run("1 + 1").stdout == "2\n"


@pytest.mark.timeout(60)
def test_session_that_closes_its_reply_pipe_and_keeps_running(session):
    started = time.monotonic()
    result = session.run(_REPLY_PIPE + "os.close(reply_pipe())\nimport time; time.sleep(600)")
    assert time.monotonic() - started < session.timeout + 3, "the call outlived its timeout"
    # the subprocess backend sees the pipe close (a protocol error); in bwrap and Docker the sandbox's
    # init still holds the pipe, so the call times out
    assert result.status in (ExecStatus.KILLED, ExecStatus.TIMEOUT) and "restarted" in result.message
    assert session.run("2 + 2").stdout == "4\n"


@pytest.mark.timeout(60)
def test_session_that_stops_reading_requests_cannot_block_the_caller(session):
    session.run("import sys, time\nsys.modules['__main__']._read_exact = lambda stream, n: time.sleep(3600)")
    started = time.monotonic()
    result = session.run("x = 1  # " + "y" * (4 << 20))  # more than a pipe holds
    assert time.monotonic() - started < session.timeout + 3
    assert result.status is ExecStatus.TIMEOUT and "restarted" in result.message
    assert session.run("3").stdout == "3\n"


def test_reply_without_the_request_id_is_a_protocol_error(session):
    started = time.monotonic()
    forged = session.run(_REPLY_PIPE + "send({'stdout': 'forged\\n', 'stderr': '', 'error': False, 'truncated': False})"
                                       "\nimport time; time.sleep(0.5)")
    assert_broke_the_protocol(forged, session, started)
    assert session.run("print('next')").stdout == "next\n"


def test_forged_reply_cannot_shift_later_answers(session):
    # With the right id (read from the server's frame) the code may answer its own call; the real reply
    # that follows is then one nobody asked for, and the next call must not take it for its own.
    forge = _REPLY_PIPE + textwrap.dedent("""
        import sys
        frame = sys._getframe()
        while "request" not in frame.f_locals:
            frame = frame.f_back
        send({"id": frame.f_locals["request"]["id"], "stdout": "forged\\n", "stderr": "", "error": False,
              "truncated": False})
    """)
    assert session.run(forge).stdout == "forged\n"
    started = time.monotonic()
    assert_broke_the_protocol(session.run("print('second')"), session, started)
    assert session.run("print('third')").stdout == "third\n"
    assert session.run("print('fourth')").stdout == "fourth\n"
