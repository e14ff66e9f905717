"""Wires the layers together and runs the daemon: one frontend connection, then exit."""

import contextlib
import logging
import os
import resource
import signal
import socket
import stat

from . import _ring
from .dax import DaxWindow
from .fs.passthrough import PassthroughFs
from .fuse.engine import FuseEngine
from .transport.fusedev import FuseMount
from .vhost_user.backend import BackendChannel
from .vhost_user.connection import Connection
from .vhost_user.device import VhostUserFsDevice

log = logging.getLogger("fastvfs")


class Shutdown(Exception):
    """Raised in the main thread by SIGTERM/SIGINT."""


def _on_signal(signum, frame):
    raise Shutdown(signal.Signals(signum).name)


def listen(socket_path):
    """Create the listening socket, replacing a stale one left by a dead daemon.

    The socket is bound under a temporary name and renamed into place once it listens, so a
    frontend that sees the path can connect at once (QEMU tries exactly once).
    """
    try:
        if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            os.unlink(socket_path)
    except FileNotFoundError:
        pass
    staging = f"{socket_path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(staging)
        sock.listen(1)
        os.rename(staging, socket_path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return sock


def raise_fd_limit(wanted):
    """Every inode the guest knows holds an O_PATH descriptor: lift RLIMIT_NOFILE as far as the
    system allows (up to ``wanted``) so a large tree does not run the daemon out of fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except OSError:
        ceiling = hard
    target = min(wanted, ceiling)
    for limit in ((target, target), (min(target, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            return limit[0]
        except (ValueError, OSError):
            continue
    return soft


def drop_supplementary_groups():
    """The daemon's own supplementary groups would count in permission checks made with a
    guest user's fsuid/fsgid (a guest user in the host's root group): drop them."""
    if os.geteuid() == 0:
        os.setgroups([])


# Node ids the guest may hold at once; each is an O_PATH descriptor (RLIMIT_NOFILE allowing).
MAX_INODES = 1 << 20


def build_engine(options, handles, inodes=None, dax=None):
    """The process set-up and the file system + FUSE engine, the same for every transport."""
    os.umask(0)  # the client already applied its umask to the modes it sends
    nofile = raise_fd_limit(options.rlimit_nofile)
    drop_supplementary_groups()
    log.debug("RLIMIT_NOFILE %d", nofile)
    fs = PassthroughFs(options.shared_dir, handles, inodes=inodes, writeback=options.writeback,
                       allow_direct_io=options.allow_direct_io, xattrmap=options.xattrmap)
    return FuseEngine(fs, options.cache, xattr=options.xattr, writeback=options.writeback,
                      readdirplus=not options.no_readdirplus, posix_locks=options.posix_lock,
                      flock=options.flock, posix_acl=options.posix_acl, dax=dax)


def run_mount(options):
    """Serve ``options.shared_dir`` to the host kernel at ``options.mountpoint`` until it is
    unmounted or a signal arrives; returns the exit status."""
    engine = build_engine(options, _ring.HandleTable())
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
    """Serve ``options.shared_dir`` on one vhost-user connection; returns the exit status."""
    handles = _ring.HandleTable()
    inodes = _ring.HandleTable(MAX_INODES)
    backend = window = None
    window_size = getattr(options, "dax_window_size", 0)
    if window_size:
        backend = BackendChannel()
        window = DaxWindow(window_size, backend)
    engine = build_engine(options, handles, inodes, dax=window)
    fs = engine.fs
    sec, nsec = engine.cache.timeout
    device = VhostUserFsDevice(engine.handle, handles, num_queues=1 + options.request_queues,
                               on_reset=engine.reset, inodes=inodes,
                               attr_timeout=sec + nsec / 1e9,
                               shmem_sizes=(window_size,) if window_size else (),
                               backend=backend)
    engine.on_session = device.set_fast_io

    if options.fd is not None:
        listener = socket.socket(fileno=options.fd)
        socket_path = None
    else:
        listener = listen(options.socket_path)
        socket_path = options.socket_path
    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("waiting for a frontend on %s", socket_path or f"fd {options.fd}")
        conn_sock, _ = listener.accept()
        # One frontend per daemon, as the reference daemons do: stop listening at once.
        listener.close()
        if socket_path:
            os.unlink(socket_path)
            socket_path = None
        log.info("frontend connected; serving %s (cache=%s)", fs.root_path, options.cache)
        device.serve(Connection(conn_sock))
        conn_sock.close()
    except Shutdown as exc:
        log.info("%s: shutting down", exc)
        device.reset()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        listener.close()
        if socket_path:
            try:
                os.unlink(socket_path)
            except FileNotFoundError:
                pass
    return 0
