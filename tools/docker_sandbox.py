"""The Docker sandbox: one fresh container per run, from the image built from containers/python-sandbox.

Each container runs as the image's non-root user with no network, a read-only
root, a tmpfs /tmp, memory (no swap), CPU, pids and rlimit caps, every
capability dropped and no-new-privileges, and the label `envgym.sandbox=1` (so
leftovers can be found: `docker ps -a --filter label=envgym.sandbox=1`). The
program, its files and its stdin travel over the container's stdin to a small
bootstrap that writes the files to /tmp and execs the program, so a container
can be created before the call: `warm_pool=N` keeps N created containers
ready. A container is removed when its run ends, times out, or is interrupted.

Output is read from the container's logs (json-file, rotated at twice
`max_output_bytes`), so an output flood runs until the timeout; the result is
still cut to the cap and marked `output_limit`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import struct
import threading
import time
from pathlib import Path

from envgym.tools.sandbox import ExecResult, ExecStatus, Limits, Sandbox, check_files, classify

IMAGE = "envgym/python-sandbox:latest"
DOCKERFILE_DIR = Path(__file__).resolve().parent.parent / "containers" / "python-sandbox"
LABEL = {"envgym.sandbox": "1"}
_BOOTSTRAP = (
    "import json, os, struct\n"
    "def read(n):\n"
    "    data = b''\n"
    "    while len(data) < n:\n"
    "        chunk = os.read(0, n - len(data))\n"
    "        if not chunk:\n"
    "            raise SystemExit('envgym bootstrap: stdin closed before the job arrived')\n"
    "        data += chunk\n"
    "    return data\n"
    "job = json.loads(read(struct.unpack('>Q', read(8))[0]))\n"
    "for name, content in job['files'].items():\n"
    "    with open('/tmp/' + name, 'wb') as f:\n"
    "        f.write(__import__('base64').b64decode(content))\n"
    "os.chdir('/tmp')\n"
    "os.execvpe(job['argv'][0], job['argv'], {**os.environ, **job['env']})\n"
)


@functools.cache
def docker_problem() -> str | None:
    """None when a Docker engine answers here; otherwise why not."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker
    except ImportError:
        return "the docker Python SDK is not installed (pip install docker)"
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:  # any failure to reach the engine means: no Docker here
        return f"no Docker engine answers at {host}: {type(exc).__name__}: {exc}"
    return None


class DockerSandbox(Sandbox):
    """Runs each program in a fresh, locked-down container of `image` (built from containers/ if missing)."""

    name = "docker"

    def __init__(self, limits: Limits | None = None, python: str = "python3", image: str = IMAGE,
                 cpus: float = 1.0, warm_pool: int = 0, client=None):
        super().__init__(limits, python)
        import docker

        self._docker = docker
        self.client = client or docker.from_env()
        self.image, self.cpus, self.warm_pool = image, float(cpus), int(warm_pool)
        self._ensure_image()
        self._pool: list = []
        self._pool_lock = threading.Lock()
        self._refill()

    def _ensure_image(self) -> None:
        try:
            self.client.images.get(self.image)
        except self._docker.errors.ImageNotFound:
            if self.image != IMAGE:
                raise
            self.client.images.build(path=str(DOCKERFILE_DIR), tag=IMAGE, rm=True)

    def _create(self, limits: Limits):
        """A created (not started) container that runs the bootstrap under `limits`."""
        ulimit = self._docker.types.Ulimit
        return self.client.containers.create(
            self.image, [self.python, "-E", "-s", "-c", _BOOTSTRAP],
            stdin_open=True, stdin_once=True, network_disabled=True, read_only=True,
            tmpfs={"/tmp": f"size={limits.tmp_bytes},mode=1777"}, working_dir="/tmp",
            mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes, nano_cpus=int(self.cpus * 1e9),
            pids_limit=limits.max_processes, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            ulimits=[ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
                     ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes),
                     ulimit(name="core", soft=0, hard=0)],
            log_config=self._docker.types.LogConfig(
                type="json-file", config={"max-size": str(2 * limits.max_output_bytes), "max-file": "1"}),
            labels=LABEL,
        )

    def _refill(self) -> None:
        while len(self._pool) < self.warm_pool:
            container = self._create(self.limits)
            with self._pool_lock:
                self._pool.append(container)

    def _take(self, limits: Limits):
        if limits == self.limits:
            with self._pool_lock:
                container = self._pool.pop() if self._pool else None
            if container is not None:
                threading.Thread(target=self._refill, daemon=True).start()
                return container
        return self._create(limits)

    def spawn(self, argv, *, files=None, limits=None, env=None):
        raise NotImplementedError("the Docker sandbox runs whole programs (run); persistent sessions need the "
                                  "bwrap or subprocess sandbox")

    def run(self, argv=None, *, code=None, stdin=b"", files=None, timeout=10.0, limits=None, env=None) -> ExecResult:
        """See `Sandbox.run`; one fresh container per call."""
        argv, files = self.prepare(argv, code, files, timeout)
        limits = limits or self.limits
        job = json.dumps({"argv": argv, "env": dict(env or {}),
                          "files": {n: base64.b64encode(c).decode() for n, c in check_files(files).items()}})
        payload = struct.pack(">Q", len(job)) + job.encode() + (stdin.encode() if isinstance(stdin, str) else stdin)
        start = time.monotonic()
        container = self._take(limits)
        try:
            sock = container.attach_socket(params={"stdin": 1, "stream": 1})
            container.start()
            raw = getattr(sock, "_sock", sock)
            raw.sendall(payload)
            raw.close()
            timed_out = False
            try:
                exit_code = container.wait(timeout=timeout)["StatusCode"]
            except Exception:  # requests' ReadTimeout (or a lost connection): treat as the timeout
                timed_out, exit_code = True, None
                container.kill()
            cap = limits.max_output_bytes
            stdout, out_flood = _read_logs(container, cap, stdout=True)
            stderr, err_flood = _read_logs(container, cap, stdout=False)
            container.reload()
            oom = container.attrs.get("State", {}).get("OOMKilled", False)
        finally:
            container.remove(force=True)
        duration = time.monotonic() - start
        if oom and not timed_out:
            return ExecResult(stdout, stderr, exit_code, False, ExecStatus.MEMORY, duration,
                              "killed: the container ran out of memory")
        return classify(stdout, stderr, exit_code, timed_out, out_flood or err_flood, duration, timeout, cap)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for container in pool:
            container.remove(force=True)


def _read_logs(container, cap: int, stdout: bool) -> tuple[str, bool]:
    """Up to `cap` bytes of one log stream, and whether there was more."""
    data = bytearray()
    for chunk in container.logs(stdout=stdout, stderr=not stdout, stream=True):
        data += chunk
        if len(data) > cap:
            return bytes(data[:cap]).decode("utf-8", errors="replace"), True
    return bytes(data).decode("utf-8", errors="replace"), False
