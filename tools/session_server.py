"""The interpreter loop of a persistent Python session; runs INSIDE a sandbox (stdlib only).

Protocol on the original stdin/stdout: each message is an 8-byte big-endian
length and that many bytes of UTF-8 JSON. The server first sends
{"id": 0, "ready": true}; then for each request {"id": int, "code": str,
"max_output": int} it execs `code` in one globals dict kept across requests (if
the last statement is an expression, its repr is printed, as in a notebook) and
answers {"id": the request's id, "stdout": str, "stderr": str, "error": bool,
"truncated": bool}.

The snippet's fds 1 and 2 point at in-memory files, so output of child
processes is captured too and never corrupts the protocol stream by accident.
Code that does write to the reply pipe on purpose (it runs in this process and
can find it) gets no further than breaking the protocol: the caller checks
every reply's length, form and id, and kills and restarts the session on any
error (envgym.tools.python_exec).
"""

import ast
import io
import json
import os
import struct
import sys
import traceback


def _memory_file(name):
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name)
    import tempfile

    return os.dup(tempfile.TemporaryFile().fileno())


def _read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send(stream, message):
    body = json.dumps(message).encode("utf-8")
    stream.write(struct.pack(">Q", len(body)) + body)
    stream.flush()


def _run(code, namespace, cell):
    """Exec `code` in `namespace`; returns True when it raised."""
    try:
        tree = ast.parse(code, filename=f"<cell {cell}>")
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, f"<cell {cell}>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"<cell {cell}>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        return False
    except BaseException as exc:  # the snippet's SystemExit and KeyboardInterrupt are its errors too
        frames = traceback.extract_tb(exc.__traceback__)
        keep = [f for f in frames if f.filename.startswith("<cell")]  # drop this server's own frames
        sys.stderr.write("Traceback (most recent call last):\n" if keep else "")
        sys.stderr.write("".join(traceback.format_list(keep)))
        sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
        return True


def _not_dumpable():
    """Let no other process of this uid (a snippet's child) open this one's /proc/PID/mem or attach to it."""
    import ctypes

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def main():
    _not_dumpable()
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out_fds = (_memory_file("stdout"), _memory_file("stderr"))
    for target, fd in zip((1, 2), out_fds):
        os.dup2(fd, target)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    _send(replies, {"id": 0, "ready": True})
    cell = 0
    while True:
        header = _read_exact(requests, 8)
        if header is None:
            return
        request = json.loads(_read_exact(requests, struct.unpack(">Q", header)[0]))
        cell += 1
        for fd in (1, 2):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      write_through=True)
        error = _run(request["code"], namespace, cell)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        limit = int(request["max_output"])
        sizes = [os.fstat(fd).st_size for fd in (1, 2)]
        takes = (limit - min(sizes[1], limit // 2), min(sizes[1], limit // 2))
        texts = [os.pread(fd, take, 0).decode("utf-8", errors="replace") for fd, take in zip((1, 2), takes)]
        _send(replies, {"id": request["id"], "stdout": texts[0], "stderr": texts[1], "error": error,
                        "truncated": sum(sizes) > limit})


if __name__ == "__main__":
    main()
