"""The seccomp filter every sandboxed program runs under (stdlib only: it is built here and installed by
bubblewrap's `--seccomp`, or by the Docker sandbox's bootstrap inside the container).

It refuses, with EPERM, the system calls that reach into another process: `ptrace`,
`process_vm_readv`, `process_vm_writev` and `pidfd_getfd`. A sandboxed program shares its uid with
the processes the harness relies on inside the sandbox (a session's server, the lifeline's shell),
and these kernels have no Yama LSM, so without the filter it could attach to them and rewrite what
the host is told. System calls of another ABI (i386 or x32 on x86-64) are refused too, since their
numbers differ. Everything else is allowed: the filter stacks on whatever the backend applies already
(Docker's default profile).
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_NR, _ARCH = 0, 4  # offsets of seccomp_data.nr and .arch

#: machine -> (AUDIT_ARCH_*, syscall numbers of ptrace, process_vm_readv, process_vm_writev, pidfd_getfd,
#: the first number of another ABI on this arch or None)
_ARCHES = {
    "x86_64": (0xC000003E, (101, 310, 311, 438), 0x40000000),  # x32 numbers have bit 30 set
    "aarch64": (0xC00000B7, (117, 270, 271, 438), None),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


@functools.cache
def filter_program(machine: str | None = None) -> bytes:
    """The filter as a compiled BPF program (an array of `struct sock_filter`), for `machine`
    (default: this one's, `platform.machine()`), built once per machine. Raises ValueError on an architecture
    it has no system-call table for."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp filter for the {machine!r} architecture; known: {sorted(_ARCHES)}")
    audit_arch, numbers, other_abi = _ARCHES[machine]
    deny = _RET_ERRNO | errno.EPERM
    body = [_insn(_LD_W_ABS, _NR)]
    if other_abi is not None:
        body.append(_insn(_JGE_K, other_abi, jt=len(numbers) + 1))  # -> deny
    for i, nr in enumerate(numbers):
        body.append(_insn(_JEQ_K, nr, jt=len(numbers) - i))  # -> deny
    body += [_insn(_RET_K, _RET_ALLOW), _insn(_RET_K, deny)]
    arch_check = [_insn(_LD_W_ABS, _ARCH), _insn(_JEQ_K, audit_arch, jt=1), _insn(_RET_K, deny)]
    return b"".join(arch_check + body)


#: Python source that installs a filter given as bytes in `FILTER` on the running process (it must
#: already have no_new_privs); used by the Docker sandbox's bootstrap, which has only the stdlib.
INSTALL_SOURCE = (
    "def install_seccomp(program):\n"
    "    import ctypes\n"
    "    class Prog(ctypes.Structure):\n"
    "        _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_char_p)]\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    prog = Prog(len(program) // 8, program)\n"
    "    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER\n"
    "        raise OSError(ctypes.get_errno(), 'cannot install the seccomp filter')\n"
)
