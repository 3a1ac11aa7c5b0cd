"""A private Docker engine: containerd and dockerd of our own, for tests and benchmarks on a machine
whose own Docker (if any) must stay untouched.

    with PrivateDockerd() as engine:             # root only; apt-get install docker.io
        os.environ["DOCKER_HOST"] = engine.host  # unix:///tmp/envgym-dockerd-.../docker.sock
        ...

The sockets, state, pid file, trust key, configs and logs live under one
temporary directory. The images live in a data root kept in the machine's
cache (`$ENVGYM_CACHE/docker/engine-data`), so the sandbox image is built once
per machine and every later engine (a new test run, a fresh clone) finds it;
one engine at a time holds that data root (a lock its daemons inherit), and an
engine started meanwhile gets a temporary one. The engine makes no bridge, no
iptables rules and no IP masquerading (sandbox containers have no network),
reads neither /etc/docker nor /etc/containerd, and uses its own containerd,
never the machine's. `close` removes every container, stops both daemons and
deletes the temporary directory; the daemons also stop if their starter dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

_BINARIES = ("dockerd", "containerd", "runc", "docker-init")
_PR_SET_PDEATHSIG = 1


def docker_cache_dir() -> Path:
    """The machine's cache of Docker things: `$ENVGYM_CACHE/docker`, else the user cache dir's."""
    from envgym.models import cache_dir

    return cache_dir() / "docker"


def private_dockerd_problem() -> str | None:
    """None when a private engine can start here; otherwise why not."""
    if os.geteuid() != 0:
        return "a private Docker engine needs root"
    missing = [name for name in _BINARIES if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not found (Debian/Ubuntu: apt-get install docker.io)"
    return None


def _die_with_parent() -> None:
    """In the daemon, between fork and exec: SIGTERM when the thread that started it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class PrivateDockerd:
    """containerd + dockerd of our own; `host` is the DOCKER_HOST to reach them.

    `keep_images`: use the machine's cached data root when no other engine holds it (else, or when
    False, a temporary one deleted at close). Starts in the constructor (about a second); raises
    RuntimeError with the daemons' log tail if it cannot. Start it from a thread that outlives it
    (the daemons stop when that thread ends). Use as a context manager, or call `close`.
    """

    def __init__(self, keep_images: bool = True, start_timeout: float = 60.0):
        problem = private_dockerd_problem()
        if problem:
            raise RuntimeError(f"cannot start a private Docker engine: {problem}")
        self.root = Path(tempfile.mkdtemp(prefix="envgym-dockerd-"))
        self.host = f"unix://{self.root}/docker.sock"
        self._daemons: list[subprocess.Popen] = []
        self._lock_fd = self._lock_cached_data_root() if keep_images else None
        self.data_root = docker_cache_dir() / "engine-data" if self._lock_fd is not None else self.root / "data"
        try:
            (self.root / "containerd.toml").write_text("version = 2\n")
            (self.root / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
            self._start("containerd", ["containerd", "--config", str(self.root / "containerd.toml"),
                                       "--address", str(self.root / "containerd.sock"),
                                       "--root", str(self.root / "containerd"),
                                       "--state", str(self.root / "containerd-state")])
            self._wait_for(lambda: (self.root / "containerd.sock").exists(), start_timeout, "containerd")
            self._start("dockerd", [
                "dockerd", "--host", self.host, "--containerd", str(self.root / "containerd.sock"),
                "--data-root", str(self.data_root), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"), "--config-file", str(self.root / "daemon.json"),
                "--bridge", "none", "--iptables=false", "--ip-masq=false", "--userland-proxy=false"])
            self._wait_for(self._answers, start_timeout, "dockerd")
            self._remove_containers()  # a kept data root may hold those of an engine that was killed
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _lock_cached_data_root() -> int | None:
        """An fd holding the lock of the cached data root, or None when another engine holds it."""
        folder = docker_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / "engine-data.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _start(self, name: str, argv: list[str]) -> None:
        held = (self._lock_fd,) if self._lock_fd is not None else ()  # the lock lives as long as the daemons
        with open(self.root / f"{name}.log", "wb") as log:
            self._daemons.append(subprocess.Popen(argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True, pass_fds=held,
                                                  preexec_fn=_die_with_parent))

    def _answers(self) -> bool:
        import docker

        try:
            docker.DockerClient(base_url=self.host, timeout=5).ping()
        except Exception:  # not up yet: connection refused, socket missing
            return False
        return True

    def _wait_for(self, ready, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            exited = [p for p in self._daemons if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                why = "exited" if exited else f"did not answer within {timeout:g} s"
                raise RuntimeError(f"the private {name} {why}; log tail:\n{self._log_tail(name)}")
            time.sleep(0.1)

    def _log_tail(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else "(no log)"

    def _remove_containers(self) -> None:
        import docker

        api = docker.APIClient(base_url=self.host, timeout=30)
        for container in api.containers(all=True):
            try:
                api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass

    def close(self) -> None:
        """Remove every container, stop dockerd then containerd, unmount and delete the temporary directory
        (idempotent)."""
        if self._daemons and self._daemons[-1].poll() is None and len(self._daemons) == 2:
            try:
                self._remove_containers()
            except Exception:  # the engine is broken: stopping it below is what is left to do
                pass
        for daemon in reversed(self._daemons):  # dockerd first: it stops its containers through containerd
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self._daemons = []
        if self._lock_fd is not None:
            unmount_under(self.data_root)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.root.exists():
            unmount_under(self.root)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateDockerd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever is still mounted under `root` (deepest first), so deleting it cannot reach
    through a mount into another filesystem."""
    prefix = str(root) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
