"""The bubblewrap sandbox: namespaces for filesystem, network, PIDs, IPC and UTS; rlimits; a private /tmp.

What enforces what:
- filesystem: a fresh root holding read-only binds of /usr, /etc (with
  /etc/shadow and /etc/gshadow masked), the interpreter's prefix and any
  `ro_binds`; /home and /root do not exist; `/`, `/dev` (so /dev/shm) and `/proc`
  are remounted read-only once set up; /tmp is a private tmpfs of
  `Limits.tmp_bytes`, the only writable place; the program's files are
  read-only copies in /tmp, which is the working directory.
- network: `--unshare-net` (a namespace with only a downed loopback).
- processes: `--unshare-pid`, and the lifeline's shell is pid 1 (`--as-pid-1`):
  the program is its child, and when the program exits or is killed the shell
  exits and the kernel kills everything else in the namespace (detached,
  setsid'd and nohup'd children included). No process inside can signal pid 1.
  `--die-with-parent` kills the sandbox if the caller dies once bwrap is set up;
  bwrap's own setup is a window it does not cover (a caller killed in it
  orphaned the sandbox 8 times in 10), so the shell first writes to a pipe whose
  only read end the caller holds, and does not start the program if the
  caller is gone (see `_on_lifeline`); and bwrap's first inner process, which
  can be left waiting for ever by a launcher killed with the caller, is killed
  with its process group by a `DeathWatch` of the caller's (`_sandbox_groups`).
- other processes: a seccomp filter (`envgym.tools.seccomp`) refuses ptrace and
  process_vm_readv/writev, and the read-only /proc refuses /proc/PID/mem
  writes, so a program cannot reach into the shell or a session's server.
  The count of processes is capped by RLIMIT_NPROC, which the kernel enforces
  per uid and never for root: run as root, the program runs as a fresh
  unprivileged uid (no groups, no capabilities, no new privileges), so the cap
  is that call's own; run as a normal user, the cap counts all of that user's
  processes.
- user namespaces: where the installed bwrap and the kernel allow it (bubblewrap
  >= 0.8, probed once), bwrap runs in a user namespace of its own with
  `--disable-userns`, so the program cannot create nested user namespaces (in
  which it could mount its own, uncapped tmpfs); as root, the fresh uid is taken
  before bwrap starts. Elsewhere bwrap runs as root and `setpriv` drops the uid
  inside.
- CPU, memory, file size: RLIMIT_CPU (SIGXCPU, reported as a timeout),
  RLIMIT_AS (MemoryError), RLIMIT_FSIZE, set in the child before exec.
- wall clock and output: the caller reads stdout/stderr incrementally, and kills
  the sandbox's process group at `timeout` seconds or `Limits.max_output_bytes`.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence

from envgym.tools.sandbox import DeathWatch, Limits, Sandbox, SandboxProcess, check_files, popen_limited
from envgym.tools.seccomp import filter_program


_SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")


@functools.cache
def _python_prefixes(python: str) -> tuple[str, ...]:
    """The directories `python` needs besides /usr: its prefix and base prefix (a venv and its base)."""
    real = os.path.realpath(python)
    if real.startswith("/usr/"):
        return ()
    out = subprocess.run([python, "-E", "-s", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    return tuple(dict.fromkeys(os.path.realpath(p) for p in out if not os.path.realpath(p).startswith("/usr/")))


@functools.cache
def bwrap_usable() -> str | None:
    """None when bubblewrap can build a sandbox here; otherwise why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = subprocess.run(
        ["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--proc", "/proc", "true"],
        capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.strip()}"
    if os.geteuid() == 0 and not bwrap_disables_userns() and shutil.which("setpriv") is None:
        return "bwrap as root needs setpriv (util-linux) to drop to an unprivileged uid"
    return None


_USERNS = ["--unshare-user", "--disable-userns"]


@functools.cache
def bwrap_disables_userns() -> bool:
    """Whether bwrap can forbid user namespaces inside the sandbox here (bubblewrap >= 0.8 and a kernel
    that lets an unprivileged user create one; as root, probed as the uid the sandbox drops to)."""
    uid = _fresh_uid() if os.geteuid() == 0 else None
    drop = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    probe = subprocess.run(["bwrap", *_USERNS, "--ro-bind", "/", "/", "true"], capture_output=True, timeout=30,
                           **drop)
    return probe.returncode == 0


_uid_counter = itertools.count()


def _fresh_uid() -> int:
    """An uid no account uses, different for each call in this process (and, mostly, across processes)."""
    return 1_000_000 + (os.getpid() % 1000) * 1000 + next(_uid_counter) % 1000


class BwrapSandbox(Sandbox):
    """Bubblewrap: namespaces for filesystem, network, PIDs, IPC and UTS; rlimits; a private /tmp.

    `ro_binds` are extra host paths made visible read-only at the same place.
    See the module docstring for what enforces what.
    """

    name = "bwrap"

    @classmethod
    def problem(cls) -> str | None:
        return bwrap_usable()

    def __init__(self, limits: Limits | None = None, python: str | None = None, ro_binds: Sequence[str] = ()):
        problem = bwrap_usable()
        if problem:
            raise RuntimeError(f"bubblewrap sandbox unavailable: {problem}")
        super().__init__(limits, python)
        self.as_root = os.geteuid() == 0
        self.disables_userns = bwrap_disables_userns()
        binds = ["/usr", "/etc", *_python_prefixes(self.python), *ro_binds]
        missing = [p for p in binds if not os.path.exists(p)]
        if missing:
            raise ValueError(f"ro_binds must exist on the host; missing: {missing}")
        hidden = [p for p in binds if self.as_root and self.disables_userns and not _world_readable(p)]
        if hidden:  # bwrap runs as the dropped uid, so it could not bind them
            raise ValueError(f"ro_binds and the interpreter's prefix must be readable by any user (o+r, and o+x "
                             f"on every parent directory); not so: {hidden}")
        self._mount_args = self._mounts(list(dict.fromkeys(os.path.realpath(p) for p in binds)))

    @staticmethod
    def _mounts(binds: list[str]) -> list[str]:
        args = ["--dev", "/dev", "--proc", "/proc"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        made = set()
        for path in binds:
            for parent in _ancestors(path):  # bwrap would make them 0700, hiding what is under them
                if parent not in made:
                    made.add(parent)
                    args += ["--perms", "0755", "--dir", parent]
            args += ["--ro-bind", path, path]
        for secret in _SECRET_FILES:
            if os.path.exists(secret):
                args += ["--ro-bind", "/dev/null", secret]
        return args

    def _command(self, limits: Limits, fd_args: list[str], lifeline: int, argv: Sequence[str],
                 uid: int | None) -> list[str]:
        """bwrap [options] -- the lifeline's shell -- [setpriv ...] argv: setpriv drops to `uid` where bwrap runs
        as root (no user namespaces); `fd_args` are the options that pass file descriptors (the seccomp filter,
        the program's files), `lifeline` the pipe of `_on_lifeline`.

        The shell runs as pid 1 of the sandbox (`--as-pid-1`), which no process inside can signal; without user
        namespaces it stays root (without setpriv's uid change, which would keep bwrap from signalling it when
        the caller dies). `/`, `/dev` and `/proc` are remounted read-only once everything is mounted, so the
        capped /tmp is the only place a program can write (and /proc/PID/mem opens for reading only).
        """
        cmd = ["bwrap", *(_USERNS if self.disables_userns else []),
               "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session", "--as-pid-1", *self._mount_args,
               "--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp", *fd_args, "--chdir", "/tmp",
               "--remount-ro", "/", "--remount-ro", "/dev", "--remount-ro", "/proc"]
        if uid is not None and not self.disables_userns:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs", "--", *argv]
        return [*cmd, "--", *_on_lifeline(lifeline, argv)]

    def spawn(self, argv, *, files=None, limits=None, env=None) -> SandboxProcess:
        limits = limits or self.limits
        uid = _fresh_uid() if self.as_root else None  # the program's uid on the host, where the caller is root
        fds, file_args = [], []
        lifeline_end, lifeline = _lifeline_pipe()
        fds.append(lifeline)
        try:
            fds.append(_seccomp_fd())
            seccomp = ["--seccomp", str(fds[-1])]
            if uid is not None:
                os.fchown(lifeline, uid, uid)  # the lifeline check reopens it through /proc, as the program's uid
            for name, content in check_files(files).items():
                fd = os.memfd_create(name)
                fds.append(fd)
                os.write(fd, content)
                os.lseek(fd, 0, os.SEEK_SET)
                file_args += ["--perms", "0444", "--ro-bind-data", str(fd), f"/tmp/{name}"]
            # with user namespaces bwrap needs no privileges, so as root it starts as the fresh uid
            popen = popen_limited(self._command(limits, seccomp + file_args, lifeline, argv, uid), cwd="/",
                           limits=limits, env=env, pass_fds=fds, uid=uid if self.disables_userns else None,
                           die_with_caller=True)
        except BaseException:
            os.close(lifeline_end)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        groups = _sandbox_groups()
        groups.send(f"+ {popen.pid}")

        def release() -> None:
            os.close(lifeline_end)
            groups.send(f"- {popen.pid}")
        return SandboxProcess(popen, release)


#: Kills the process groups of this process's bubblewrap sandboxes still running when it ends: bwrap's first
#: inner process waits for its launcher to write its uid map, and a caller killed then (which kills the
#: launcher) would leave it waiting for ever, before any parent-death signal or lifeline check is armed.
_GROUPS_SCRIPT = ('live=" "; while read -r op group; do case $op in +) live="$live$group ";; '
                  '-) case $live in *" $group "*) live="${live%% $group *} ${live#* $group }";; esac;; esac; done; '
                  'for group in $live; do kill -s KILL -- "-$group" 2>/dev/null; done')
_groups_watch: dict[int, DeathWatch] = {}
_groups_lock = threading.Lock()


def _sandbox_groups() -> DeathWatch:
    """This process's watch over its sandboxes' process groups (one per process: a fork makes its own)."""
    with _groups_lock:
        watch = _groups_watch.get(os.getpid())
        if watch is None or not watch.watching:
            watch = _groups_watch[os.getpid()] = DeathWatch(_GROUPS_SCRIPT)
        return watch


def _lifeline_pipe() -> tuple[int, int]:
    """A sandbox's lifeline: (read end, which stays here, non-inheritable: the caller's alone; write end)."""
    return os.pipe()


def _on_lifeline(fd: int, argv: Sequence[str]) -> list[str]:
    """`argv` behind a shell that first checks the lifeline, a pipe whose only read end the caller holds (`fd` is
    its write end).

    The shell is the sandbox's pid 1, started by bwrap once bwrap has armed its parent-death signal (so from
    then on the caller's death kills it, and with it the whole PID namespace). Before that, in bwrap's setup,
    the caller may already have died: so the shell first writes a byte into the pipe (a builtin: no process to
    start), and where that fails with EPIPE (no reader left: the caller is gone; `echo` exits 1; a pipe reopened
    through /proc never blocks) it exits without starting the program. Should the pipe not open (status 2),
    the program runs without the check, as it would without this. The shell then runs the program as its
    child, reaping any orphans while it waits, and exits with the program's status (128+N for signal N).
    Nothing inside can signal pid 1, so the program cannot end the shell without ending itself.
    """
    check = f"{{ echo > /proc/self/fd/{fd}; }} 2>/dev/null; [ $? -ne 1 ] || exit 1"
    quiet = 'exec 9>&2 2>/dev/null; (exec "$@" 2>&9 9>&-)'  # the shell's own notes ("Killed") stay out of the output
    return ["/bin/sh", "-c", f"{check}; {quiet}; exit $?", "sh", *argv]


def _seccomp_fd() -> int:
    """A file descriptor holding the compiled seccomp filter (`envgym.tools.seccomp`), for bwrap's --seccomp."""
    fd = os.memfd_create("seccomp")
    os.write(fd, filter_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _world_readable(path: str) -> bool:
    """Whether a user with no relation to the owner can reach and read `path`."""
    real = os.path.realpath(path)
    if any(not os.stat(parent).st_mode & 0o001 for parent in ["/", *_ancestors(real)]):
        return False
    mode = os.stat(real).st_mode
    return bool(mode & 0o004) and (not os.path.isdir(real) or bool(mode & 0o001))


def _ancestors(path: str) -> list[str]:
    """'/a/b/c' -> ['/a', '/a/b']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
