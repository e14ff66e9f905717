"""Wires the layers together and runs the daemon: one frontend connection, then exit."""

import contextlib
import fcntl
import logging
import os
import resource
import signal
import socket
import stat

from . import config, ring, sandbox
from .dax import DaxWindow
from .fs._tables import HandleTable, NodeTable, use_fchmodat2
from .fs.passthrough import PassthroughFs
from .fuse.engine import FuseEngine, preload as preload_engine
from .stats import STATS_SUFFIX, StatsServer
from .vhost_user.backend import BackendChannel
from .vhost_user.connection import Connection
from .vhost_user.device import VhostUserFsDevice

log = logging.getLogger("fastvfs")


_TERMINATING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Shutdown(Exception):
    """Raised in the main thread by SIGTERM/SIGINT."""


def _on_signal(signum, frame):
    raise Shutdown(signal.Signals(signum).name)


def listen(socket_path, group=None):
    """Create the listening socket, replacing a stale one left by a dead daemon.

    The socket is bound under a temporary name and renamed into place once it listens, so a
    frontend that sees the path can connect at once (QEMU tries exactly once).  It is usable by
    root only, or also by ``group`` (``--socket-group``).
    """
    try:
        if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            os.unlink(socket_path)
    except FileNotFoundError:
        pass
    gid = None
    if group is not None:
        import grp
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise SystemExit(f"fastvfs: unknown group {group!r} for --socket-group") from None
    staging = f"{socket_path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o007 if gid is not None else 0o077)
    try:
        sock.bind(staging)
        if gid is not None:
            os.chown(staging, -1, gid)
        sock.listen(1)
        os.rename(staging, socket_path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    finally:
        os.umask(old_umask)
    return sock


class PidFile:
    """``SOCKET_PATH.pid``: the daemon's pid, locked while it runs, so a second daemon on the
    same socket refuses to start instead of stealing it."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SystemExit(f"fastvfs: another daemon holds {path}") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        self.remove = PathRemover(path)

    def close(self):
        self.remove()
        os.close(self.fd)


class PathRemover:
    """Removes a path later, also from inside a sandbox where the path no longer resolves: it
    holds its directory open and unlinks by name there."""

    def __init__(self, path):
        self.dir_fd = os.open(os.path.dirname(os.path.abspath(path)) or "/",
                              os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.name = os.path.basename(path)
        self.done = False

    def __call__(self, path=None):
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            os.close(self.dir_fd)


def raise_fd_limit(wanted):
    """Every inode the guest knows holds an O_PATH descriptor: lift RLIMIT_NOFILE as far as the
    system allows (up to ``wanted``) so a large tree does not run the daemon out of fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if not wanted:
        return soft       # --rlimit-nofile 0: leave the limit as it is
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except OSError:
        ceiling = hard
    target = min(wanted, ceiling)
    return _set_limit(resource.RLIMIT_NOFILE, ((target, target), (min(target, hard), hard)),
                      soft)


def _set_limit(which, candidates, current):
    """Set the first (soft, hard) of ``candidates`` the kernel accepts; returns its soft
    limit, or ``current`` when it accepts none."""
    for limit in candidates:
        try:
            resource.setrlimit(which, limit)
            return limit[0]
        except (ValueError, OSError):
            continue
    return current


def raise_memlock_limit():
    """Registered io_uring buffers count as locked memory for a ring created without
    CAP_IPC_LOCK: --fixed-buffers pins all of guest memory, so lift RLIMIT_MEMLOCK as far as
    allowed (CAP_SYS_RESOURCE) before the sandbox.  Returns the soft limit now in force (-1:
    unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return _set_limit(resource.RLIMIT_MEMLOCK,
                      ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), (hard, hard)), soft)


def drop_supplementary_groups():
    """The daemon's own supplementary groups would count in permission checks made with a
    guest user's fsuid/fsgid (a guest user in the host's root group): drop them."""
    if os.geteuid() == 0:
        os.setgroups([])


# Node ids the guest may hold at once: each is an O_PATH descriptor (RLIMIT_NOFILE allowing),
# or with --inode-file-handles a file handle, which no descriptor limit bounds.  A node id
# table slot reserves 72 bytes, touched only once taken.
MAX_INODES = 1 << 20
MAX_INODES_BY_HANDLE = 1 << 21


def prepare_process(rlimit_nofile, fixed_buffers=False):
    """Process-wide set-up every transport needs, done before any sandbox."""
    os.umask(0)  # the client already applied its umask to the modes it sends
    nofile = raise_fd_limit(rlimit_nofile)
    drop_supplementary_groups()
    log.debug("RLIMIT_NOFILE %d", nofile)
    if fixed_buffers:
        log.debug("RLIMIT_MEMLOCK %d", raise_memlock_limit())


def build_engine(share, handles, inodes=None, dax=None, root=None):
    """The file system + FUSE engine of ``share`` (a ``ShareOptions``) over ``root``
    (default: the shared directory)."""
    fs = PassthroughFs.from_share(share, handles, inodes=inodes, root=root)
    return FuseEngine.from_share(fs, share, dax=dax)


def run_mount(options):
    """Serve ``options.share`` (a ``MountOptions``) to the host kernel at
    ``options.mountpoint`` until it is unmounted or a signal arrives; returns the exit
    status."""
    # Here, not at module level: a vhost-user daemon never loads the /dev/fuse transport.
    from .transport.fusedev import FuseMount
    prepare_process(options.rlimit_nofile)
    engine = build_engine(options.share, HandleTable())
    fuse = FuseMount(engine, options.mountpoint, threads=options.threads)
    fuse.mount()
    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        fuse.serve()
    except Shutdown as exc:
        log.info("%s: unmounting", exc)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        fuse.close()
        engine.reset()
    return 0


def run(options):
    """Serve ``options.share`` (a ``DaemonOptions``) on one vhost-user connection; returns the
    exit status.

    Order: pid file, listening sockets (vhost-user, statistics), process set-up, the sandbox
    (a namespace sandbox forks: the parent only supervises), the engine over the sandbox's
    view, capabilities and seccomp, and only then the frontend."""
    # Termination signals wait until each process knows what to do with them: the supervisor
    # forwards them, the server shuts down (pid 1 of a namespace would ignore them otherwise).
    signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATING)
    if (options.uid_map or options.gid_map) and \
            (os.geteuid() == 0 or options.sandbox == "none"):
        log.warning("--uid-map/--gid-map: ignored (they map the user namespace a daemon not "
                    "started as root sandboxes itself in)")
    if options.migration_options_given:
        log.warning("--migration-*: no effect, fastvfs does not migrate its state (the "
                    "frontend is not offered VHOST_USER_PROTOCOL_F_DEVICE_STATE)")
    socket_path = os.path.abspath(options.socket_path) if options.socket_path else None
    pid_file = PidFile(socket_path + ".pid") if socket_path else None
    if options.fd is not None:
        listener = socket.socket(fileno=options.fd)
    else:
        listener = listen(socket_path, options.socket_group)
    socket_remover = PathRemover(socket_path) if socket_path else None
    stats = ring.RequestStats()
    stats_path = options.stats_socket or (socket_path + STATS_SUFFIX if socket_path else None)
    try:
        stats_server = StatsServer(stats, stats_path, options.metrics_socket,
                                   options.metrics_interval,
                                   metrics_address=options.metrics_address)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fastvfs: cannot serve statistics: {exc}") from None
    removers = [PathRemover(p) for p in stats_server.paths]

    def cleanup():
        for remove in [socket_remover, *removers]:
            if remove:
                remove()
        if pid_file:
            pid_file.close()

    prepare_process(options.rlimit_nofile, options.ring.fixed_buffers)
    # The engine is built inside the sandbox (``_serve_setup``).
    preload_engine(options.share.thread_pool_size)
    try:
        child = sandbox.enter(options.sandbox, options.share.shared_dir, options.uid_map,
                              options.gid_map)
    except (sandbox.SandboxError, OSError) as exc:
        log.error("%s", exc)
        cleanup()
        return 1
    if child:
        listener.close()
        stats_server.detach()
        log.debug("sandboxed daemon is pid %d", child)
        return sandbox.supervise(child, cleanup, unblock=_TERMINATING)
    if options.sandbox != "none":
        sandbox.watch_imports()
    device = None
    old_handlers = {s: signal.signal(s, _on_signal) for s in _TERMINATING}
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATING)
        device = _serve_setup(options, stats)
        stats_server.start()
        log.info("waiting for a frontend on %s", socket_path or f"fd {options.fd}")
        conn_sock, _ = listener.accept()
        # One frontend per daemon, as the reference daemons do: stop listening at once.
        listener.close()
        if socket_remover:
            socket_remover()
        log.info("frontend connected; serving %s (cache=%s, sandbox=%s)",
                 options.share.shared_dir, options.share.cache, options.sandbox)
        device.serve(Connection(conn_sock))
        conn_sock.close()
    except Shutdown as exc:
        log.info("%s: shutting down", exc)
        if device is not None:
            device.reset()
    except (sandbox.SandboxError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        listener.close()
        stats_server.close(unlink=lambda path: None)
        cleanup()
    return 0


def _serve_setup(options, stats):
    """Inside the sandbox: the engine over the sandbox's view of the share, the device, and the
    last restrictions (capabilities, seccomp) before any guest request is read."""
    share = options.share
    handles = HandleTable()
    inodes = NodeTable(MAX_INODES_BY_HANDLE if share.inode_file_handles.uses_handles
                       else MAX_INODES)
    backend = window = None
    window_size = options.dax_window_size
    if window_size:
        backend = BackendChannel()
        window = DaxWindow(window_size, backend)
    engine = build_engine(share, handles, inodes, dax=window,
                          root=sandbox.root_for(options.sandbox, share.shared_dir))
    sec, nsec = engine.cache.timeout
    # The hot path answers GETATTR with the cache mode's attribute timeout, OPEN and OPENDIR
    # with its open flags, and leaves a long SYNCFS to the engine's thread pool.
    ring_options = config.replace(options.ring, attr_timeout=sec + nsec / 1e9,
                                  read_only=engine.readonly,
                                  open_flags=engine.cache.open_flags,
                                  opendir_flags=engine.cache.opendir_flags,
                                  engine_pool=engine.pool is not None)
    # The hot path answers LOOKUP and GETATTR with the host's ids: with an id translation the
    # queues are not given the node id table, so those go to the engine, which translates.
    device = VhostUserFsDevice(engine.handle, handles, num_queues=1 + options.request_queues,
                               on_reset=engine.reset, ring=ring_options,
                               inodes=inodes if engine.idmap is None else None,
                               shmem_sizes=(window_size,) if window_size else (),
                               backend=backend, tag=options.tag, stats=stats)
    # Tracing sees every request: the C fast path then hands everything to the engine.
    engine.on_session = (lambda on: device.set_fast_io(False)) if engine.trace \
        else device.set_fast_io
    capabilities = sandbox.DEFAULT_CAPABILITIES
    if ring_options.fixed_buffers:
        # Registered buffers count as locked memory unless the ring's creator holds
        # CAP_IPC_LOCK; the rings are created after the sandbox, so it is kept.
        capabilities = tuple(capabilities) + ("ipc_lock",)
    if share.inode_file_handles.uses_handles:
        # open_by_handle_at(2) reopens inodes held by file handle.
        capabilities = tuple(capabilities) + ("dac_read_search",)
    chmod_through_descriptors(options.seccomp)
    sandbox.restrict(sandbox.parse_modcaps(options.modcaps, capabilities), options.seccomp)
    return device


def chmod_through_descriptors(seccomp_action):
    """Before the filter is loaded: modes are changed with fchmodat2(2) only where the filter
    will allow it (a libseccomp that does not know the call leaves it out, and the filter
    would kill the daemon for it); else through /proc/self/fd names."""
    if not sandbox.seccomp_allows("fchmodat2", seccomp_action):
        use_fchmodat2(False)
