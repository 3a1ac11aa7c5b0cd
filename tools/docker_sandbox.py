"""The Docker sandbox: one container per run or per Python session, from the image made by
`envgym.tools.docker_image` (offline, from Debian packages; built on first use when missing).

    sandbox = make_sandbox("docker")                 # the engine at $DOCKER_HOST
    sandbox.run(code="print(1)", timeout=5)
    PythonSession(sandbox)                           # one long-lived container per session

What enforces what:
- filesystem: the image's root, read-only; /tmp a tmpfs of `Limits.tmp_bytes`, the only writable
  place and the working directory; the program's files are written there (mode 0444, owned by root);
  no /dev/shm (`--ipc none`), so no shared memory outside that cap.
- network: `--network none` (only a loopback of its own).
- user: programs run as uid 10001 (`SANDBOX_UID`) with no capabilities and no-new-privileges; the
  container's init and the bootstrap run as root holding only CAP_SETUID/CAP_SETGID, which the bootstrap
  drops with the uid, so a program can neither signal, trace nor write (/proc/PID/mem) them.
- system calls: Docker's default seccomp profile (which also refuses new user namespaces), and on top
  envgym's filter (`envgym.tools.seccomp`: no ptrace, no process_vm_readv/writev), installed by the
  bootstrap before it execs the program.
- processes: the pids cgroup (`Limits.max_processes`); docker-init is pid 1 and the program its
  child, so when the program ends the container ends and the kernel kills everything left in it.
- memory: the memory cgroup (`Limits.memory_bytes`, no swap; an OOM kill is reported as `memory`)
  and RLIMIT_AS (MemoryError, as in bubblewrap); CPU time and file size: RLIMIT_CPU, RLIMIT_FSIZE.
  The rlimits are set by a small bootstrap (`_BOOTSTRAP`) just before it execs the program.
  RLIMIT_NPROC is not used: it counts a uid's processes machine-wide, and every container shares one.
- wall clock and output: the caller reads stdout/stderr through `docker attach` and removes the
  container at `timeout` seconds or `Limits.max_output_bytes`, exactly as for bubblewrap.
- leftovers: every container carries the label `envgym.sandbox=1` and `envgym.owner=<token of the
  creating process>`; it is removed when its run ends, and a watcher process removes whatever this
  process still owns when the process ends, even by SIGKILL.

A container is created and started before its job is known: the bootstrap waits for the job (argv,
env, files, rlimits) on stdin, then execs the program with the rest of stdin as its stdin. So
`warm_pool=N` keeps N containers started and waiting, and a call skips the container start.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping

from envgym.tools.sandbox import BASE_ENV, DeathWatch, Limits, Sandbox, SandboxProcess, check_files, write_all
from envgym.tools.seccomp import INSTALL_SOURCE, filter_program

try:
    import docker
    import requests
except ImportError:  # the SDK is optional (envgym[tools]); docker_problem() says what to install
    docker = requests = None

LABEL = {"envgym.sandbox": "1"}
OWNER_LABEL = "envgym.owner"
#: The uid programs run as in a container (the image's `sandbox` user); the container's init and the
#: bootstrap run as root with only CAP_SETUID/CAP_SETGID, so a program cannot signal, trace or write them.
SANDBOX_UID = 10001
_BOOTSTRAP = INSTALL_SOURCE + (
    "import base64, json, os, resource, struct, sys\n"
    "def read(n):\n"
    "    data = b''\n"
    "    while len(data) < n:\n"
    "        chunk = os.read(0, n - len(data))\n"
    "        if not chunk:\n"
    "            sys.exit('envgym bootstrap: stdin closed before the job arrived')\n"
    "        data += chunk\n"
    "    return data\n"
    "job = json.loads(read(struct.unpack('>Q', read(8))[0]))\n"
    "for name, content in job['files'].items():\n"
    "    with open('/tmp/' + name, 'wb') as f:\n"
    "        f.write(base64.b64decode(content))\n"
    "    os.chmod('/tmp/' + name, 0o444)\n"
    "for name, pair in job['rlimits'].items():\n"
    "    resource.setrlimit(getattr(resource, name), pair)\n"
    "if os.getuid() == 0:\n"
    "    os.setgroups([])\n"
    "    os.setgid(job['uid'])\n"
    "    os.setuid(job['uid'])\n"
    "install_seccomp(base64.b64decode(job['seccomp']))\n"
    "os.chdir('/tmp')\n"
    "try:\n"
    "    os.execvpe(job['argv'][0], job['argv'], job['env'])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'envgym bootstrap: cannot run {job[\"argv\"][0]!r}: {exc}')\n"
)
_JOB_TIMEOUT = 30.0  # seconds for a container's attach to take its job


def engine_host() -> str:
    """The engine the Docker sandbox talks to: $DOCKER_HOST, else Docker's default socket."""
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def engine_client(host: str | None = None):
    """A docker.DockerClient for `host` (None: the environment's DOCKER_* settings)."""
    return docker.DockerClient(base_url=host) if host else docker.from_env()


@functools.cache
def _docker_problem(host: str) -> str | None:
    if docker is None:
        return "the docker Python SDK is not installed (pip install docker)"
    if shutil.which("docker") is None:
        return "the docker command-line client is not installed (Debian/Ubuntu: apt-get install docker.io)"
    try:
        engine_client(host).ping()
    except Exception as exc:  # any failure to reach the engine means: no Docker here
        return f"no Docker engine answers at {host}: {type(exc).__name__}: {exc}"
    return None


def docker_problem(host: str | None = None) -> str | None:
    """None when a Docker engine answers at `host` (default: `engine_host()`); otherwise why not."""
    return _docker_problem(host or engine_host())


def container_config(image: str, python: str, limits: Limits, cpus: float, owner: str) -> dict:
    """The keyword arguments of `client.containers.create` for a sandbox container running the bootstrap."""
    return dict(
        image=image, command=[python, "-E", "-s", "-c", _BOOTSTRAP], stdin_open=True, init=True, user="0:0",
        network_mode="none", ipc_mode="none", read_only=True, tmpfs={"/tmp": f"size={limits.tmp_bytes},mode=1777"},
        working_dir="/tmp", mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes,
        nano_cpus=int(cpus * 1e9), pids_limit=limits.max_processes, cap_drop=["ALL"],
        cap_add=["SETUID", "SETGID"],
        security_opt=["no-new-privileges"], log_config=docker.types.LogConfig(type="none"),
        labels={**LABEL, OWNER_LABEL: owner},
    )


def bootstrap_job(argv, files: Mapping[str, str | bytes] | None, limits: Limits,
                  env: Mapping[str, str] | None) -> bytes:
    """What `_BOOTSTRAP` reads from stdin before the program's own stdin: a length, then the job as JSON."""
    job = json.dumps({
        "argv": list(argv), "env": {**BASE_ENV, **(env or {})},
        "files": {n: base64.b64encode(c).decode() for n, c in check_files(files).items()},
        "rlimits": {k: v for k, v in limits.rlimits().items() if k != "RLIMIT_NPROC"},
        "uid": SANDBOX_UID, "seccomp": base64.b64encode(filter_program()).decode(),
    }).encode()
    return struct.pack(">Q", len(job)) + job


def _container_limits(limits: Limits) -> tuple[int, int, int]:
    """The limits fixed when a container is created (the rest travel with each job)."""
    return limits.memory_bytes, limits.max_processes, limits.tmp_bytes


class _Owner:
    """This process's token on the containers it creates, and a `DeathWatch` that removes every container
    labelled with the token when the process ends, however it ends."""

    _SCRIPT = 'while read -r _; do :; done; ids=$("$0" ps -aq --filter "label=$1"); [ -z "$ids" ] || "$0" rm -f $ids'

    def __init__(self, cli_env: Mapping[str, str]):
        self.token = uuid.uuid4().hex
        self.watch = DeathWatch(self._SCRIPT, [shutil.which("docker"), f"{OWNER_LABEL}={self.token}"], env=cli_env)
        atexit.register(self.watch.release)  # at a normal exit, wait until what is left is removed


_owners: dict[str, _Owner] = {}
_owners_lock = threading.Lock()


def _owner(host: str, cli_env: Mapping[str, str]) -> _Owner:
    with _owners_lock:
        if host not in _owners:
            _owners[host] = _Owner(cli_env)
        return _owners[host]


def _forget_owners_after_fork() -> None:
    """A forked child gets its own token and watch (`DeathWatch` lets go of the parent's in the child)."""
    global _owners_lock
    _owners.clear()
    _owners_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_owners_after_fork)


class _ContainerProcess(SandboxProcess):
    """`docker attach` to a started container; `kill()` also removes the container (first noting an OOM kill)."""

    def __init__(self, popen: subprocess.Popen, container):
        super().__init__(popen, self._remove)
        self.container = container

    def _remove(self) -> None:
        try:
            if self.popen.returncode == 128 + signal.SIGKILL:  # the container's program got SIGKILL: the OOM killer?
                self.container.reload()
                self.out_of_memory = bool(self.container.attrs.get("State", {}).get("OOMKilled"))
            self.container.remove(force=True)
        except docker.errors.NotFound:  # already gone (removed by the engine's owner, or the watcher)
            pass


class DockerSandbox(Sandbox):
    """Runs each program, or each Python session, in its own locked-down container of `image`.

    `image` None: the offline-built sandbox image (`envgym.tools.docker_image`), made on first use if
    the engine lacks it. `host`: the engine (None: $DOCKER_HOST). `cpus`: CPU share of a container.
    `warm_pool`: containers kept started and waiting, for calls with this sandbox's limits.
    """

    name = "docker"

    @classmethod
    def problem(cls) -> str | None:
        """None where a Docker engine answers at $DOCKER_HOST; otherwise why not (`docker_problem`)."""
        return docker_problem()

    def __init__(self, limits: Limits | None = None, python: str = "python3", image: str | None = None,
                 cpus: float = 1.0, warm_pool: int = 0, host: str | None = None):
        super().__init__(limits, python)
        host = host or engine_host()
        problem = docker_problem(host)
        if problem:
            raise RuntimeError(f"Docker sandbox unavailable: {problem}")
        from envgym.tools.docker_image import ensure_image

        self.client = engine_client(host)
        self._cli_env = {**os.environ, "DOCKER_HOST": host}
        if image is None:
            image = ensure_image(self.client)
        else:
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                raise ValueError(f"image {image!r} is not in the engine at {host}; build it first, or pass "
                                 f"image=None for the sandbox image") from None
        self.image, self.cpus, self.warm_pool = image, float(cpus), int(warm_pool)
        self.owner = _owner(host, self._cli_env).token
        self._pool: list = []
        self._pool_lock = threading.Lock()
        self._refill()

    def _started(self, limits: Limits):
        """A new container, started: its bootstrap waits for a job on stdin."""
        container = self.client.containers.create(**container_config(self.image, self.python, limits, self.cpus,
                                                                     self.owner))
        try:
            container.start()
        except BaseException:
            container.remove(force=True)
            raise
        return container

    def _refill(self) -> None:
        while True:
            with self._pool_lock:
                if len(self._pool) >= self.warm_pool:
                    return
            container = self._started(self.limits)
            with self._pool_lock:
                wanted = len(self._pool) < self.warm_pool  # `close` may have run meanwhile
                if wanted:
                    self._pool.append(container)
            if not wanted:
                container.remove(force=True)

    def _refill_in_background(self) -> None:
        def refill():
            try:
                self._refill()
            except docker.errors.DockerException:  # the next call creates its own container and reports it
                pass

        threading.Thread(target=refill, daemon=True).start()

    def _take(self, limits: Limits):
        if self.warm_pool and _container_limits(limits) == _container_limits(self.limits):
            with self._pool_lock:
                container = self._pool.pop(0) if self._pool else None
            self._refill_in_background()
            if container is not None:
                return container
        return self._started(limits)

    def spawn(self, argv, *, files=None, limits=None, env=None) -> SandboxProcess:
        """Start `argv` in a container (a waiting one from the pool where limits allow); see `Sandbox.spawn`.

        Returns once the container runs and has taken its job, so a call's timeout is the program's.
        """
        limits = limits or self.limits
        job = bootstrap_job(argv, files, limits, env)
        try:
            container = self._take(limits)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise OSError(f"the engine at {self._cli_env['DOCKER_HOST']} could not start a container: {exc}") from None
        try:
            popen = subprocess.Popen(["docker", "attach", "--sig-proxy=false", container.id], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._cli_env,
                                     start_new_session=True)
        except OSError:
            container.remove(force=True)
            raise
        proc = _ContainerProcess(popen, container)
        try:
            write_all(popen.stdin.fileno(), job, time.monotonic() + _JOB_TIMEOUT)
        except (TimeoutError, BrokenPipeError) as exc:
            proc.kill()
            raise OSError(f"the container did not take its job: {str(exc) or type(exc).__name__}") from None
        return proc

    def close(self) -> None:
        """Remove the containers of the warm pool (running calls and sessions remove their own)."""
        with self._pool_lock:
            pool, self._pool, self.warm_pool = self._pool, [], 0
        for container in pool:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
