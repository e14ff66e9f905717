"""Confining the daemon: namespaces or chroot, capabilities, and the seccomp filter.

The guest is untrusted, so once the daemon is set up it should be able to reach nothing but the
shared directory, hold only the capabilities file serving needs, and make only the system calls
its code makes.  The steps, in the order :func:`enter` and :func:`restrict` take them:

``--sandbox namespace`` (default)
    New mount, pid and network namespaces.  The process forks: the parent stays outside, forwards
    SIGTERM/SIGINT/SIGHUP and exits with the child's status; the child (pid 1 of its namespace)
    mounts a private /proc, keeps a descriptor of ``/proc/self/fd`` (how inodes are named for
    xattr, chmod and reopen calls), bind-mounts the shared directory (remounted nodev and nosuid,
    with every mount under it) and pivots into it, so the host's tree is gone from its view.
``--sandbox chroot``
    ``chroot`` into the shared directory (for containers without namespace rights); the working
    directory stays inside it (:mod:`fastvfs.procfd` names descriptors without one outside).
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
    An allow-list of system calls kept by name (:data:`ALLOWED_SYSCALLS`), turned into a filter
    by libseccomp for whatever architecture the daemon runs on (any libseccomp knows) and applied
    to every thread; anything else kills the process (``--seccomp kill``), is logged (``log``),
    raises SIGSYS (``trap``), or no filter is installed (``none``, the only mode that works
    without libseccomp).
"""

import ctypes
import logging
import os
import signal
import sys

from . import procfd, seccomp

log = logging.getLogger("fastvfs.sandbox")

# The C library's wrappers (pivot_root, capget and capset included) carry each architecture's
# system call numbers; seccomp filters come from libseccomp (:mod:`fastvfs.seccomp`).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.pivot_root.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
_libc.capget.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_RDONLY, MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 1, 32, 1024, 2048
MS_BIND, MS_REC, MS_SLAVE, MS_RELATIME, MS_STRICTATIME = 4096, 16384, 1 << 19, 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24

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
        # The working directory stays inside the chroot: one on the host's /proc would lead
        # out of it (``..``).  Descriptors are named through proc_fd only during each call.
        proc_fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(shared_dir)
        os.chroot(".")
        os.chdir("/")
        procfd.set_switched(proc_fd)
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
        _make_nodev_nosuid(target)
        os.chdir(shared_dir)
        _check(_libc.pivot_root(b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "unmount of the old root")
        os.chdir("/")
        _use_proc_fd(proc_fd)
    except BaseException as exc:
        sys.stderr.write(f"fastvfs: cannot enter the namespace sandbox: {exc}\n")
        os._exit(1)
    return None


def _make_nodev_nosuid(target):
    """Remount the bind mount of the share at ``target`` and every mount under it nodev and
    nosuid, in this mount namespace only: a device node in the share is then never a device,
    and no setuid file in it an elevation, even if a type check were missed.  A bind remount
    (mount(2), MS_BIND | MS_REMOUNT) sets all per-mount flags at once, so each mount's own
    (read-only, noexec, atime) are passed back; in a user namespace they are locked and
    clearing one would be refused."""
    prefix = os.path.realpath(target).rstrip(b"/") + b"/"
    points = [target]
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _mountinfo_unescape(line.split()[4])
            if point.startswith(prefix):
                points.append(point)
    for point in points:
        flags = os.statvfs(point).f_flag
        keep = ((MS_RDONLY if flags & os.ST_RDONLY else 0) |
                (MS_NOEXEC if flags & os.ST_NOEXEC else 0) |
                (MS_NODIRATIME if flags & os.ST_NODIRATIME else 0) |
                (MS_NOATIME if flags & os.ST_NOATIME else
                 MS_RELATIME if flags & os.ST_RELATIME else MS_STRICTATIME))
        _check(_libc.mount(None, point, None,
                           MS_BIND | MS_REMOUNT | MS_NODEV | MS_NOSUID | keep, None),
               f"remount of {os.fsdecode(point)} nodev,nosuid")


def _mountinfo_unescape(field):
    """A mount point as proc(5) mountinfo writes it: space, tab, newline and backslash as
    octal escapes."""
    for escaped, char in ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"),
                          (b"\\134", b"\\")):
        field = field.replace(escaped, char)
    return field


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
    # By its soname, as glibc's own dlopen of it asks for it (no ldconfig run, no search).
    try:
        ctypes.CDLL("libgcc_s.so.1")
    except OSError:
        pass
    # logging.handlers is not among them: setup_logging imports it before the sandbox where
    # syslog is asked for, and nothing else uses it.  Nor is encodings.idna: the socket module
    # encodes a host name with it only for a non-ASCII name given to a TCP call, and the one
    # TCP socket (--metrics-address) is bound before the sandbox.
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
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for i in range(2):
        bits = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted &= bits
        data[i].effective &= bits
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


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

ACTIONS = {"kill": seccomp.SCMP_ACT_KILL_PROCESS, "trap": seccomp.SCMP_ACT_TRAP,
           "log": seccomp.SCMP_ACT_LOG}

# Every system call the daemon makes once serving, by name: libseccomp gives each its number on
# the architecture the daemon runs on.  Names an architecture lacks (``open``, ``stat``,
# ``arch_prctl``... on aarch64, whose C library uses the ``*at`` and ``p*`` forms listed too)
# are left out of its filter.
ALLOWED_SYSCALLS = frozenset((
    # Memory: the allocator, thread stacks, guest memory regions mapped from the frontend's fds.
    "brk", "mmap", "mremap", "munmap", "mprotect", "madvise", "msync",
    # Threads (queue workers, the thread pool) and their synchronisation.
    "clone", "clone3", "exit", "exit_group", "set_tid_address", "set_robust_list",
    "get_robust_list", "rseq", "futex", "futex_waitv", "gettid", "sched_yield",
    "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getcpu", "arch_prctl",
    "prctl", "restart_syscall",
    # Signals: termination handling, the interpreter's signal wake-ups, glibc's set*id
    # broadcast to every thread.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "kill", "tkill", "tgkill",
    # Time: timeouts, statistics, log records.
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "times", "getrusage",
    # The process: identity, limits (the descriptor budget), randomness, reaping children.
    "getpid", "getppid", "getpgrp", "setsid", "uname", "sysinfo", "umask", "getrandom",
    "getrlimit", "setrlimit", "prlimit64", "getpriority", "wait4",
    # Credentials: requests run with the caller's fsuid/fsgid and groups, per thread.
    "getuid", "geteuid", "getresuid", "getgid", "getegid", "getresgid", "getgroups", "setuid",
    "setgid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capget",
    "capset",
    # Descriptors and waiting: the event loops, kick/call eventfds, memfds.
    "read", "write", "readv", "writev", "close", "close_range", "dup", "dup2", "dup3",
    "fcntl", "ioctl", "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
    "eventfd2", "memfd_create",
    # Sockets: the vhost-user connection (descriptors passed with SCM_RIGHTS) and the
    # statistics and metrics sockets.
    "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "sendmmsg", "recvmmsg",
    # The passthrough file system: every FUSE operation, on O_PATH descriptors and
    # /proc/self/fd names; ``unshare`` gives each worker thread its own umask (CLONE_FS).
    "open", "openat", "openat2", "name_to_handle_at", "open_by_handle_at", "stat", "lstat",
    "fstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir",
    "mknod", "mknodat", "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat",
    "readlink", "readlinkat", "rename", "renameat", "renameat2", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes", "futimesat",
    "utimensat", "truncate", "ftruncate", "fallocate", "flock", "unshare",
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    # File data: READ/WRITE, copies, flushes.
    "lseek", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "sendfile",
    "splice", "tee", "vmsplice", "copy_file_range", "readahead", "fadvise64", "fsync",
    "fdatasync", "sync_file_range", "sync", "syncfs",
    # io_uring: the queues' READ/WRITE/FSYNC rings.
    "io_uring_setup", "io_uring_enter", "io_uring_register",
))


# Calls allowed with one first argument only.  ``unshare``: a thread's own file-system context
# (CLONE_FS: its umask, its working directory in the chroot sandbox), never a new namespace
# once the sandbox is set up.
ALLOWED_FIRST_ARGUMENT = {"unshare": CLONE_FS}


def seccomp_filter(action, arch=None):
    """The allow-list as a libseccomp filter for ``arch`` (default: this machine's): the
    listed calls allowed, ``action`` (a key of :data:`ACTIONS`) for the rest.  Returns the
    :class:`fastvfs.seccomp.Filter` (the caller releases it) and the sorted names left out as
    absent on that architecture."""
    filt = seccomp.Filter(ACTIONS[action], arch)
    try:
        skipped = sorted(name for name in ALLOWED_SYSCALLS
                         if not filt.allow(name, ALLOWED_FIRST_ARGUMENT.get(name)))
    except BaseException:
        filt.release()
        raise
    for name in skipped:
        log.debug("seccomp: no system call %s on %s", name, arch or "this architecture")
    return filt, skipped


def seccomp_allows(name, action):
    """Whether the filter ``action`` installs (``none``: no filter) lets the daemon make system
    call ``name``: on the list, and known to this libseccomp on this architecture.  Asked
    before the filter is loaded, for calls the daemon makes only where they are allowed."""
    if action == "none":
        return True
    return name in ALLOWED_SYSCALLS and seccomp.available() and seccomp.resolve(name) is not None


def install_seccomp(action):
    """Install the filter on every thread of the process (``none``: nothing).  Returns the
    names of the allowed calls the filter could not name (absent on this architecture, or
    unknown to this libseccomp): the daemon must not make them."""
    if action == "none":
        return []
    if not seccomp.available():
        raise SandboxError(f"--seccomp {action} needs libseccomp (Debian package libseccomp2): "
                           f"{seccomp.LOAD_ERROR}; --seccomp none runs without a filter")
    try:
        filt, skipped = seccomp_filter(action)
        with filt:
            filt.load()
    except seccomp.SeccompError as exc:
        raise SandboxError(f"seccomp: {exc}") from None
    return skipped


def restrict(capabilities, seccomp_action):
    """Drop capabilities, then install the system-call filter (the last step: from here on
    every thread started inherits it).  Returns what ``install_seccomp`` returns."""
    drop_capabilities(capabilities)
    skipped = install_seccomp(seccomp_action)
    log.info("sandbox: capabilities %s, seccomp %s", ",".join(capabilities) or "none",
             seccomp_action)
    return skipped


