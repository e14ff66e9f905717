"""The seccomp allow-list by name: every name resolves on x86-64, the filter libseccomp builds
for x86-64 and for aarch64 allows exactly the listed calls (checked by running the exported BPF
program on seccomp_data records), and without libseccomp only ``--seccomp none`` works."""

import struct

import pytest

from fastvfs import sandbox, seccomp

# Calls of the allow-list that aarch64 does not have (its C library uses the *at, p* and
# epoll_pwait forms, also listed): left out of its filter, never an error.
ABSENT_ON_AARCH64 = {
    "access", "arch_prctl", "chmod", "chown", "dup2", "epoll_create", "epoll_wait", "eventfd",
    "futimesat", "getdents", "getpgrp", "lchown", "link", "lstat", "mkdir", "mknod", "open",
    "pipe", "poll", "readlink", "rename", "rmdir", "select", "stat", "symlink", "time",
    "unlink", "utime", "utimes",
}

# Numbers from each architecture's table (arch/x86/entry/syscalls/syscall_64.tbl,
# include/uapi/asm-generic/unistd.h), independent of libseccomp.
KNOWN = {
    "x86_64": {"read": 0, "openat": 257, "newfstatat": 262, "io_uring_enter": 426,
               "setfsuid": 122, "fchmodat2": 452},
    "aarch64": {"read": 63, "openat": 56, "newfstatat": 79, "io_uring_enter": 426,
                "setfsuid": 151, "fchmodat2": 452},
}
NOT_ALLOWED = {"x86_64": {"reboot": 169, "ptrace": 101, "pivot_root": 155, "mount": 165,
                          "init_module": 175, "kexec_load": 246, "bpf": 321, "seccomp": 317},
               "aarch64": {"reboot": 142, "ptrace": 117, "pivot_root": 41, "mount": 40,
                           "init_module": 105, "kexec_load": 104, "bpf": 280, "seccomp": 277}}
# Calls newer than some libseccomp releases know (upstream 2.5.4 has no fchmodat2): a filter
# leaves them out there, and the daemon makes them only where the filter has them
# (``sandbox.seccomp_allows``).
OPTIONAL = {"fchmodat2"}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000


def run_bpf(prog, nr, arch, args=(0,) * 6):
    """Run a classic BPF seccomp program (linux/filter.h opcodes) on a seccomp_data record
    ``{nr, arch, instruction_pointer, args[6]}``; returns the action it answers."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", prog, off) for off in range(0, len(prog), 8)]
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:                     # BPF_LD | BPF_W | BPF_ABS
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x00:                   # BPF_LD | BPF_IMM
            a = k
        elif code == 0x01:                   # BPF_LDX | BPF_IMM
            x = k
        elif code == 0x54:                   # BPF_ALU | BPF_AND | BPF_K
            a &= k
        elif code == 0x05:                   # BPF_JMP | BPF_JA
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45, 0x1D, 0x2D, 0x3D):
            operand = x if code & 0x08 else k
            test = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                    0x40: bool(a & operand)}[code & 0xF0]
            pc += jt if test else jf
        elif code == 0x06:                   # BPF_RET | BPF_K
            return k
        elif code == 0x16:                   # BPF_RET | BPF_A
            return a
        else:
            raise AssertionError(f"BPF opcode {code:#x} not understood by this interpreter")


def _unknown(arch):
    """The optional calls this libseccomp cannot name on ``arch``."""
    return {n for n in OPTIONAL if seccomp.resolve(n, arch) is None}


def test_every_allowed_name_resolves_on_x86_64():
    missing = {n for n in sandbox.ALLOWED_SYSCALLS if seccomp.resolve(n, "x86_64") is None}
    assert missing == _unknown("x86_64")


def test_names_absent_on_aarch64_are_known():
    absent = {n for n in sandbox.ALLOWED_SYSCALLS if seccomp.resolve(n, "aarch64") is None}
    assert absent == ABSENT_ON_AARCH64 | _unknown("aarch64")


def test_seccomp_allows_what_the_filter_will_have(monkeypatch):
    assert sandbox.seccomp_allows("fchmodat2", "kill") == (seccomp.resolve("fchmodat2")
                                                           is not None)
    assert sandbox.seccomp_allows("reboot", "kill") is False
    assert sandbox.seccomp_allows("reboot", "none") is True
    # A libseccomp that cannot name the call (upstream 2.5.4): the filter leaves it out.
    real = seccomp.resolve
    monkeypatch.setattr(seccomp, "resolve",
                        lambda name, arch=None: None if name == "fchmodat2" else real(name, arch))
    assert sandbox.seccomp_allows("fchmodat2", "kill") is False
    assert sandbox.seccomp_allows("fchmodat2", "log") is False
    assert sandbox.seccomp_allows("fchmodat2", "none") is True
    assert sandbox.seccomp_allows("read", "kill") is True


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("action", ["kill", "log", "trap"])
def test_filter_allows_exactly_the_list(arch, action):
    filt, skipped = sandbox.seccomp_filter(action, arch)
    with filt:
        prog = filt.export_bpf()
    assert skipped == sorted((ABSENT_ON_AARCH64 if arch == "aarch64" else set()) |
                             _unknown(arch))
    audit_arch = AUDIT_ARCH[arch]
    allowed = {}
    for name in sandbox.ALLOWED_SYSCALLS - set(skipped):
        allowed[name] = seccomp.resolve(name, arch)
        first = sandbox.ALLOWED_FIRST_ARGUMENT.get(name)
        args = (first or 0, 0, 0, 0, 0, 0)
        assert run_bpf(prog, allowed[name], audit_arch, args) == seccomp.SCMP_ACT_ALLOW, name
        if first is not None:
            # Only that first argument: another value, or more bits, gets the action.
            for other in (0, first | 1 << 30, first << 32):
                assert run_bpf(prog, allowed[name], audit_arch,
                               (other, 0, 0, 0, 0, 0)) == sandbox.ACTIONS[action], name
    for name, nr in KNOWN[arch].items():
        if name not in _unknown(arch):
            assert allowed[name] == nr, name
    refused = sandbox.ACTIONS[action]
    for name, nr in NOT_ALLOWED[arch].items():
        assert seccomp.resolve(name, arch) == nr
        assert run_bpf(prog, nr, audit_arch) == refused, name
    # Numbers no call has, and every number up to 512 not on the list.
    numbers = set(allowed.values())
    for nr in range(512):
        if nr not in numbers:
            assert run_bpf(prog, nr, audit_arch) == refused, nr
    # Another architecture's calls (or x32's on x86-64) kill whatever the action.
    other = AUDIT_ARCH["aarch64" if arch == "x86_64" else "x86_64"]
    assert run_bpf(prog, allowed["read"], other) == seccomp.SCMP_ACT_KILL_PROCESS
    if arch == "x86_64":
        assert run_bpf(prog, X32_SYSCALL_BIT | 0, audit_arch) == seccomp.SCMP_ACT_KILL_PROCESS


def test_seccomp_needs_libseccomp(monkeypatch):
    monkeypatch.setattr(seccomp, "_lib", None)
    monkeypatch.setattr(seccomp, "LOAD_ERROR", "libseccomp.so.2: cannot open shared object file")
    with pytest.raises(sandbox.SandboxError) as exc:
        sandbox.install_seccomp("kill")
    message = str(exc.value)
    assert "\n" not in message
    assert "libseccomp2" in message and "--seccomp none" in message
    assert sandbox.install_seccomp("none") == []
