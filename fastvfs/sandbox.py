"""Confining the daemon: namespaces or chroot, capabilities, and the seccomp filter.

The guest is untrusted, so once the daemon is set up it should be able to reach nothing but the
shared directory, hold only the capabilities file serving needs, and make only the system calls
its code makes.  The steps, in the order :func:`enter` and :func:`restrict` take them:

``--sandbox namespace`` (default)
    New mount, pid and network namespaces.  The process forks: the parent stays outside, forwards
    SIGTERM/SIGINT/SIGHUP and exits with the child's status; the child (pid 1 of its namespace)
    mounts a private /proc, keeps a descriptor of ``/proc/self/fd`` (how inodes are named for
    xattr, chmod and reopen calls), bind-mounts the shared directory and pivots into it, so the
    host's tree is gone from its view.
``--sandbox chroot``
    ``chroot`` into the shared directory (for containers without namespace rights).
user namespace (a daemon not started as root)
    Before either of the above, a new user namespace owned by the daemon's user, in which that
    user is root: it holds the capabilities the steps above and file serving need, over the ids
    the namespace maps.  By default the map is the daemon's own uid/gid as 0 (written directly,
    ``setgroups`` denied); ``--uid-map``/``--gid-map`` install larger maps through the setuid
    helpers ``newuidmap``/``newgidmap`` (subordinate ids from /etc/subuid, /etc/subgid).  A guest
    id outside the map cannot own anything: its creations fail with EPERM.
capabilities
    Everything but CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD and SETFCAP is
    dropped from every set (``--modcaps=+sys_admin:-mknod`` adjusts the list); the bounding set
    too, so nothing can be regained.
seccomp
    An allow-list of system calls (x86-64) as a classic BPF filter; anything else kills the
    process (``--seccomp kill``), is logged (``log``), raises SIGSYS (``trap``), or the filter is
    not installed (``none``).
"""

import ctypes
import logging
import os
import signal
import struct
import sys

from . import procfd

log = logging.getLogger("fastvfs.sandbox")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_SLAVE, MS_RELATIME = 4096, 16384, 1 << 19, 1 << 21
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155
SYS_CAPGET, SYS_CAPSET = 125, 126
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1

CAPABILITIES = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4, "kill": 5,
    "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9, "net_bind_service": 10,
    "net_broadcast": 11, "net_admin": 12, "net_raw": 13, "ipc_lock": 14, "ipc_owner": 15,
    "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18, "sys_ptrace": 19, "sys_pacct": 20,
    "sys_admin": 21, "sys_boot": 22, "sys_nice": 23, "sys_resource": 24, "sys_time": 25,
    "sys_tty_config": 26, "mknod": 27, "lease": 28, "audit_write": 29, "audit_control": 30,
    "setfcap": 31, "mac_override": 32, "mac_admin": 33, "syslog": 34, "wake_alarm": 35,
    "block_suspend": 36, "audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}
# What serving files as any guest user takes (the reference daemons keep the same list).
DEFAULT_CAPABILITIES = ("chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod",
                        "setfcap")


class SandboxError(Exception):
    pass


_host_pid = None


def host_pid():
    """The daemon's pid as the host sees it (inside a namespace sandbox ``os.getpid()`` is 1):
    what log lines and statistics name, so an operator can match them to a host process."""
    return _host_pid or os.getpid()


def _record_host_pid():
    """In the child of a namespace sandbox, before /proc is replaced: the host's /proc still
    names this process by its host pid.  Log records carry that pid from now on."""
    global _host_pid
    _host_pid = int(os.readlink("/proc/self"))
    make_record = logging.getLogRecordFactory()

    def record(*args, **kwargs):
        rec = make_record(*args, **kwargs)
        rec.process = _host_pid
        return rec
    logging.setLogRecordFactory(record)


def _check(result, what):
    if result < 0 if isinstance(result, int) else result is None:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")
    return result


# -- namespaces and chroot ----------------------------------------------------------------------

def enter(mode, shared_dir, uid_map=(), gid_map=()):
    """Isolate the process.  Returns the child's pid in the parent of a namespace sandbox (which
    must then only :func:`supervise` it), else None; the caller then serves from ``root``:
    ``"/"`` when sandboxed, ``shared_dir`` otherwise (see :func:`root_for`).  ``uid_map`` and
    ``gid_map``: the user namespace's maps when the daemon is not root (see
    :func:`enter_user_namespace`)."""
    if mode == "none":
        return None
    _preload()
    if os.geteuid() != 0:
        enter_user_namespace(uid_map, gid_map)
    proc_fd = None
    if mode == "chroot":
        proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chroot(shared_dir)
        os.chdir("/")
        _use_proc_fd(proc_fd)
        return None
    if mode != "namespace":
        raise ValueError(f"unknown sandbox mode {mode!r}")
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET), "unshare (namespace "
           "sandbox; try --sandbox chroot where namespaces are not allowed)")
    pid = os.fork()
    if pid:
        return pid
    try:
        # Die with the parent: it is what the VMM or the service manager watches.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        _record_host_pid()
        # Mount events must not travel back to the host's namespace.
        _check(_libc.mount(None, b"/", None, MS_SLAVE | MS_REC, None), "mount / slave")
        _check(_libc.mount(b"proc", b"/proc", b"proc",
                           MS_NODEV | MS_NOEXEC | MS_NOSUID | MS_RELATIME, None), "mount /proc")
        proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        target = os.fsencode(shared_dir)
        _check(_libc.mount(target, target, None, MS_BIND | MS_REC, None),
               "bind mount of the shared directory")
        os.chdir(shared_dir)
        _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "unmount of the old root")
        os.chdir("/")
        _use_proc_fd(proc_fd)
    except BaseException as exc:
        sys.stderr.write(f"fastvfs: cannot enter the namespace sandbox: {exc}\n")
        os._exit(1)
    return None


class IdMap:
    """One ``--uid-map``/``--gid-map`` range, virtiofsd's syntax ``:NAMESPACE_ID:HOST_ID:COUNT:``
    (any one character delimits, the first says which): ``count`` ids from ``host`` on are
    ``namespace`` on within the user namespace."""
    __slots__ = ("namespace", "host", "count")

    def __init__(self, text):
        sep = text[:1]
        fields = text.split(sep) if sep and not sep.isalnum() else []
        if len(fields) != 5 or fields[0] or fields[4]:
            raise ValueError(f"expected :namespace_id:host_id:count:, got {text!r}")
        try:
            self.namespace, self.host, self.count = (int(f) for f in fields[1:4])
        except ValueError:
            raise ValueError(f"expected decimal ids in {text!r}") from None
        if min(self.namespace, self.host) < 0 or self.count < 1 or \
                max(self.namespace, self.host) + self.count > 1 << 32:
            raise ValueError(f"id range out of bounds in {text!r}")

    def __repr__(self):
        return f":{self.namespace}:{self.host}:{self.count}:"


def enter_user_namespace(uid_map=(), gid_map=()):
    """For a daemon not started as root: move into a new user namespace in which it is root
    (user_namespaces(7)), so the namespace or chroot steps and file serving have the
    capabilities they need there.  Without maps, the daemon's uid and gid become 0: an
    unprivileged process may write that one-id map itself once ``setgroups`` is denied.  With
    ``uid_map``/``gid_map`` (:class:`IdMap` lists; a missing one defaults to the one-id map),
    the setuid helpers ``newuidmap``/``newgidmap`` write them from outside the namespace, after
    checking them against /etc/subuid and /etc/subgid.  Must run while the process has a single
    thread (unshare(CLONE_NEWUSER) requires it)."""
    uid, gid = os.geteuid(), os.getegid()
    helpers = []
    if uid_map:
        helpers.append(["newuidmap", None, *_map_args(uid_map)])
    if gid_map:
        helpers.append(["newgidmap", None, *_map_args(gid_map)])
    pid = os.getpid()
    # The helpers act on this process from outside the namespace: a child started before the
    # unshare runs them once told the namespace exists.
    helper = None
    if helpers:
        ready_r, ready_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            status = 1
            try:
                os.close(ready_w)
                if os.read(ready_r, 1) == b"1":
                    import subprocess
                    for argv in helpers:
                        argv[1] = str(pid)
                        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
                    status = 0
            except BaseException as exc:
                sys.stderr.write(f"fastvfs: cannot map ids in the user namespace: {exc}\n")
            finally:
                os._exit(status)
        os.close(ready_r)
    failed = _libc.unshare(CLONE_NEWUSER) < 0
    err = ctypes.get_errno()
    if helper:
        os.write(ready_w, b"0" if failed else b"1")
        os.close(ready_w)
        _, status = os.waitpid(helper, 0)
        if not failed and status:
            raise SandboxError("newuidmap/newgidmap failed for --uid-map/--gid-map (are the "
                               "host ids delegated to this user in /etc/subuid, /etc/subgid?)")
    if failed:
        raise SandboxError(f"unshare of a user namespace (needed to sandbox a daemon not "
                           f"started as root): {os.strerror(err)}; unprivileged user "
                           f"namespaces may be disabled here (user.max_user_namespaces, "
                           f"kernel.apparmor_restrict_unprivileged_userns); else run as root "
                           f"or with --sandbox none")
    if not gid_map:
        # An unprivileged writer may map its own gid only once setgroups(2) is refused for good.
        _write_proc("/proc/self/setgroups", "deny")
        _write_proc("/proc/self/gid_map", f"0 {gid} 1\n")
    if not uid_map:
        _write_proc("/proc/self/uid_map", f"0 {uid} 1\n")
    # Become the namespace's root, so the credentials and capabilities are those of uid 0 there.
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as exc:
        raise SandboxError(f"the user namespace maps no id 0 for this daemon ({exc.strerror}): "
                           f"--uid-map and --gid-map must map namespace id 0") from None
    if gid_map:
        os.setgroups([])
    log.debug("user namespace: uid map %s, gid map %s", _read_proc("/proc/self/uid_map"),
              _read_proc("/proc/self/gid_map"))


def _map_args(ranges):
    return [str(n) for r in ranges for n in (r.namespace, r.host, r.count)]


def _write_proc(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise SandboxError(f"{path}: {exc.strerror}") from None


def _read_proc(path):
    with open(path) as f:
        return " / ".join(" ".join(line.split()) for line in f)


def _preload():
    """Load now what the C library and the interpreter would otherwise load from disk later,
    when the host's tree is out of reach: libgcc_s (glibc unwinds exiting threads with it)
    and modules imported lazily on rare paths."""
    import ctypes.util
    name = ctypes.util.find_library("gcc_s")
    if name:
        ctypes.CDLL(name)
    import encodings.idna  # noqa: F401  (socket error paths)
    import logging.handlers  # noqa: F401
    import traceback  # noqa: F401  (logging.exception)


def watch_imports():
    """From now on, log every module that is imported from disk: inside the sandbox the host's
    tree (the interpreter's library included) is out of reach, so such an import fails, and
    the request that needed it with it.  Everything the daemon can run is imported before the
    sandbox (module level, or :func:`_preload`); a line here is a defect, and the tests that
    run the daemon with its defaults fail on it.  The ``import`` audit event is raised only
    for modules not yet in ``sys.modules``, so the hook costs nothing on the serving paths."""
    reported = set()

    def hook(event, args):
        if event == "import" and args[0] not in reported:
            reported.add(args[0])
            log.error("module %s imported inside the sandbox", args[0])
    sys.addaudithook(hook)


def root_for(mode, shared_dir):
    return shared_dir if mode == "none" else "/"


def _use_proc_fd(proc_fd):
    """Make ``/proc/self/fd`` (opened before the old root went away) the working directory,
    so descriptors keep being nameable as relative paths (:mod:`fastvfs.procfd`)."""
    os.fchdir(proc_fd)
    os.close(proc_fd)
    procfd.set_relative()


def supervise(child, cleanup=None, unblock=()):
    """The parent side of a namespace sandbox: forward termination signals, wait, and return
    the exit status to exit with.  ``unblock``: signals held back until forwarding is set."""
    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    if unblock:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
    drop_capabilities(())
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            status = 0
            break
    if cleanup:
        cleanup()
    if os.WIFSIGNALED(status):
        log.error("the sandboxed daemon died of signal %d", os.WTERMSIG(status))
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- capabilities -------------------------------------------------------------------------------

def parse_modcaps(text, base=DEFAULT_CAPABILITIES):
    """``+cap:-cap`` changes to ``base``; returns the sorted tuple kept.  ValueError if bad."""
    keep = set(base)
    if text:
        for item in text.split(":"):
            if len(item) < 2 or item[0] not in "+-":
                raise ValueError(f"--modcaps: expected (+|-)capability, got {item!r}")
            name = item[1:].lower().removeprefix("cap_")
            if name not in CAPABILITIES:
                raise ValueError(f"--modcaps: unknown capability {item[1:]!r}")
            (keep.add if item[0] == "+" else keep.discard)(name)
    return tuple(sorted(keep))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_VERSION_3 = 0x20080522


def drop_capabilities(keep):
    """Keep only ``keep`` (names) in the effective and permitted sets; empty the inheritable
    and, where possible, the bounding set of everything else."""
    mask = 0
    for name in keep:
        mask |= 1 << CAPABILITIES[name]
    last = _last_cap()
    for cap in range(last + 1):
        if not mask & (1 << cap):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)   # EPERM without SETPCAP: fine
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_CAPGET, ctypes.byref(header), data), "capget")
    for i in range(2):
        bits = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted &= bits
        data[i].effective &= bits
        data[i].inheritable = 0
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), data), "capset")


def effective_capabilities():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


# -- seccomp ------------------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
ACTIONS = {"kill": SECCOMP_RET_KILL_PROCESS, "trap": SECCOMP_RET_TRAP, "log": SECCOMP_RET_LOG}

# Every system call the daemon makes once serving (x86-64 numbers): the Python runtime, the
# vhost-user control plane, the Cython hot path and the passthrough file system.
ALLOWED_SYSCALLS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6, "poll": 7,
    "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13,
    "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "pwrite64": 18,
    "readv": 19, "writev": 20, "access": 21, "pipe": 22, "select": 23, "sched_yield": 24,
    "mremap": 25, "msync": 26, "madvise": 28, "dup": 32, "dup2": 33, "nanosleep": 35,
    "getpid": 39, "sendfile": 40, "socket": 41, "connect": 42, "accept": 43, "sendto": 44,
    "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "bind": 49, "listen": 50,
    "getsockname": 51, "getpeername": 52, "socketpair": 53, "setsockopt": 54, "getsockopt": 55,
    "clone": 56, "exit": 60, "wait4": 61, "kill": 62, "uname": 63, "fcntl": 72, "flock": 73,
    "fsync": 74, "fdatasync": 75, "truncate": 76, "ftruncate": 77, "getdents": 78,
    "getcwd": 79, "chdir": 80, "fchdir": 81, "rename": 82, "mkdir": 83, "rmdir": 84,
    "link": 86, "unlink": 87, "symlink": 88, "readlink": 89, "chmod": 90, "fchmod": 91,
    "chown": 92, "fchown": 93, "lchown": 94, "umask": 95, "gettimeofday": 96, "getrlimit": 97,
    "getrusage": 98, "sysinfo": 99, "times": 100, "getuid": 102, "getgid": 104, "setuid": 105,
    "setgid": 106, "geteuid": 107, "getegid": 108, "getppid": 110, "getpgrp": 111,
    "setsid": 112, "setresuid": 117, "getresuid": 118, "setresgid": 119, "getresgid": 120,
    "getgroups": 115, "setgroups": 116, "setfsuid": 122, "setfsgid": 123, "capget": 125,
    "capset": 126, "rt_sigpending": 127, "rt_sigtimedwait": 128, "rt_sigqueueinfo": 129,
    "sigaltstack": 131, "utime": 132, "mknod": 133, "statfs": 137, "fstatfs": 138,
    "getpriority": 140, "sched_getparam": 143, "sched_getscheduler": 145, "prctl": 157,
    "arch_prctl": 158, "setrlimit": 160, "sync": 162, "gettid": 186, "readahead": 187,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "getxattr": 191, "lgetxattr": 192,
    "fgetxattr": 193, "listxattr": 194, "llistxattr": 195, "flistxattr": 196,
    "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199, "tkill": 200, "time": 201,
    "futex": 202, "sched_getaffinity": 204, "epoll_create": 213, "getdents64": 217,
    "set_tid_address": 218, "restart_syscall": 219, "fadvise64": 221, "clock_gettime": 228,
    "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231, "epoll_wait": 232,
    "epoll_ctl": 233, "tgkill": 234, "utimes": 235, "openat": 257, "mkdirat": 258,
    "mknodat": 259, "fchownat": 260, "futimesat": 261, "newfstatat": 262, "unlinkat": 263,
    "renameat": 264, "linkat": 265, "symlinkat": 266, "readlinkat": 267, "fchmodat": 268,
    "faccessat": 269, "pselect6": 270, "ppoll": 271, "unshare": 272, "set_robust_list": 273,
    "get_robust_list": 274, "splice": 275, "tee": 276, "sync_file_range": 277, "vmsplice": 278,
    "utimensat": 280, "epoll_pwait": 281, "eventfd": 284, "fallocate": 285, "accept4": 288,
    "eventfd2": 290, "epoll_create1": 291, "dup3": 292, "pipe2": 293, "preadv": 295,
    "pwritev": 296, "rt_tgsigqueueinfo": 297, "recvmmsg": 299, "prlimit64": 302,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "syncfs": 306, "sendmmsg": 307,
    "getcpu": 309, "renameat2": 316, "getrandom": 318, "memfd_create": 319, "copy_file_range": 326,
    "preadv2": 327, "pwritev2": 328, "statx": 332, "rseq": 334, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "openat2": 437, "close_range": 436, "clone3": 435,
    "faccessat2": 439, "epoll_pwait2": 441, "futex_waitv": 449,
}


def seccomp_filter(action):
    """The classic BPF program: allow the listed calls on x86-64, ``action`` for the rest."""
    def stmt(code, k):
        return struct.pack("=HBBI", code, 0, 0, k)

    def jump(code, k, jt, jf):
        return struct.pack("=HBBI", code, jt, jf, k)
    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
    numbers = sorted(set(ALLOWED_SYSCALLS.values()))
    prog = [stmt(BPF_LD_W_ABS, 4),                                   # seccomp_data.arch
            jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, 0)]                                   # seccomp_data.nr
    # x32 system calls (bit 30) are not allowed: they fail the equality tests below.
    for i, nr in enumerate(numbers):
        remaining = len(numbers) - i - 1
        prog.append(jump(BPF_JEQ_K, nr, remaining + 1, 0))
    prog.append(stmt(BPF_RET_K, ACTIONS[action]))
    prog.append(stmt(BPF_RET_K, SECCOMP_RET_ALLOW))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(action):
    if action == "none":
        return
    if os.uname().machine != "x86_64":
        raise SandboxError("the seccomp allow-list is for x86-64; use --seccomp none")
    prog = b"".join(seccomp_filter(action))
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    # TSYNC: every thread of the process gets the filter, not only the calling one.
    _check(_libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                         ctypes.byref(fprog)), "seccomp")


def restrict(capabilities, seccomp):
    """Drop capabilities, then install the system-call filter (the last step: from here on
    every thread started inherits it)."""
    drop_capabilities(capabilities)
    install_seccomp(seccomp)
    log.info("sandbox: capabilities %s, seccomp %s", ",".join(capabilities) or "none", seccomp)


