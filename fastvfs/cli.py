"""Command line, with the reference daemon's option names.

    fastvfs --socket-path PATH --shared-dir DIR [options]   serve a VMM over vhost-user
    fastvfs mount SHARED_DIR MOUNTPOINT [options]           serve the host kernel (/dev/fuse)
"""

import argparse
import json
import logging
import os
import socket
import stat as stat_mod
import sys

from . import __version__
from .config import (DaemonOptions, InodeFileHandles, IoEngine, MountOptions, RingOptions,
                     ShareOptions)

# The reference daemons' spellings: trace/debug/info/warn/error/off, and err.
LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
              "err": logging.ERROR, "off": logging.CRITICAL + 1}


def add_fs_options(p):
    """Options of the file system and the FUSE session, the same for every transport."""
    p.add_argument("--cache", default="auto",
                   choices=["never", "none", "auto", "metadata", "always"],
                   help="client caching: never (coherent), auto (1 s, close-to-open), "
                        "metadata (metadata cached, data not), always (single writer)")
    p.add_argument("--writeback", action="store_true",
                   help="let the client cache writes (FUSE_WRITEBACK_CACHE)")
    p.add_argument("--allow-direct-io", action="store_true",
                   help="honour the client's O_DIRECT on the host")
    p.add_argument("--allow-mmap", action="store_true",
                   help="let the client mmap files it does not cache (--cache never and "
                        "metadata) shared, through FUSE_DIRECT_IO_ALLOW_MMAP; for a share no "
                        "one else changes")
    p.add_argument("--preserve-noatime", action="store_true",
                   help="honour the client's O_NOATIME on the host (dropped by default: the "
                        "host refuses it to a daemon that neither owns the file nor has "
                        "CAP_FOWNER)")
    p.add_argument("--security-label", action="store_true",
                   help="FUSE_SECURITY_CTX: new files get the security label (e.g. "
                        "security.selinux) the client sends, through --xattrmap; implies "
                        "--xattr")
    p.add_argument("--no-readdirplus", action="store_true",
                   help="do not offer READDIRPLUS (listings then carry no attributes)")
    p.add_argument("--xattr", action=argparse.BooleanOptionalAction, default=False,
                   help="serve extended attributes (default off)")
    p.add_argument("--xattrmap", metavar="RULES",
                   help="map extended attribute names between client and host "
                        "(rules ':type:scope:key:prepend:'; implies --xattr)")
    p.add_argument("--posix-acl", action="store_true",
                   help="POSIX ACLs: the client enforces them, the host applies default ACLs "
                        "and the caller's umask at creation (implies --xattr)")
    p.add_argument("--posix-lock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve POSIX record locks as host OFD locks (default on)")
    p.add_argument("--flock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve flock() locks on the host (default on)")
    p.add_argument("--rlimit-nofile", type=int, default=1_000_000, metavar="N",
                   help="raise the open-file limit to N (default 1000000, capped by the system)")
    p.add_argument("--readonly", action="store_true",
                   help="share the directory read-only: every change is refused with EROFS")
    p.add_argument("--announce-submounts", action=argparse.BooleanOptionalAction, default=True,
                   help="tell the guest which directories are mount points on the host, so it "
                        "gives each file system its own device number (default on)")
    p.add_argument("--inode-file-handles", default=InodeFileHandles.NEVER.value,
                   choices=[mode.value for mode in InodeFileHandles],
                   help="how inodes are held: never (an O_PATH descriptor each, the default); "
                        "prefer (file handles where the file system has them, descriptors "
                        "elsewhere; fallback is the same); mandatory (file handles only: a "
                        "lookup on a file system without them fails with EOPNOTSUPP)")
    p.add_argument("--killpriv-v2", dest="killpriv_v2", action=argparse.BooleanOptionalAction,
                   default=False,
                   help="offer FUSE_HANDLE_KILLPRIV_V2: the guest leaves clearing setuid/setgid "
                        "on write, truncate and chown to fastvfs (default off: the guest clears "
                        "them itself, which also suits shares on NFS)")
    p.add_argument("--translate-uid", action="append", default=[], type=_translation,
                   metavar="TYPE:BASE:BASE:COUNT",
                   help="translate user ids between guest and host (repeatable, first match "
                        "wins): guest:GUEST:HOST:N, host:HOST:GUEST:N, map:GUEST:HOST:N, "
                        "squash-guest:GUEST:HOST_ID:N, squash-host:HOST:GUEST_ID:N, "
                        "forbid-guest:GUEST:N")
    p.add_argument("--translate-gid", action="append", default=[], type=_translation,
                   metavar="TYPE:BASE:BASE:COUNT", help="the same for group ids")
    p.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    p.add_argument("-V", "--version", action="version", version=f"fastvfs {__version__}")


def _translation(text):
    from .fs.idmap import Rule
    try:
        return Rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, as wide as the terminal (``COLUMNS``, else standard output's
    size, else 80 columns, less 2, as argparse's own), measured without ``shutil``: argparse
    builds a formatter for every ``add_argument``, and the stock one imports ``shutil`` (with
    its compression modules) for the width, into every daemon's start-up."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns():
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def parser():
    p = argparse.ArgumentParser(
        prog="fastvfs", description="virtio-fs vhost-user backend",
        formatter_class=_HelpFormatter,
        epilog="subcommands (each has its own --help):\n"
               "  fastvfs mount SHARED_DIR MOUNTPOINT   serve the host kernel through /dev/fuse\n"
               "  fastvfs stats                         a running daemon's request statistics\n"
               "  fastvfs descriptor [--install [DIR]]  the vhost-user descriptor for libvirt")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", help="vhost-user Unix socket to create and listen on")
    where.add_argument("--socket", dest="socket_path", help=argparse.SUPPRESS)  # old name
    where.add_argument("--fd", type=int, help="an already listening socket inherited as fd N")
    p.add_argument("--socket-group", metavar="GROUP",
                   help="group owning the socket, which it may then use (default: root only)")
    p.add_argument("--shared-dir", help="directory to share with the guest")
    p.add_argument("--tag", help="file system tag the guest mounts by, for frontends that read "
                                 "it from the backend (at most 36 bytes)")
    p.add_argument("--request-queues", type=int, default=16, metavar="N",
                   help="most request queues offered to the frontend (default 16)")
    p.add_argument("--thread-pool-size", type=int, default=0, metavar="N",
                   help="serve requests that block (everything but the C fast path) on a pool "
                        "of N threads, so a slow one never holds up its queue (default 0: on "
                        "the queue's own thread)")
    p.add_argument("--io-engine", choices=[engine.value for engine in IoEngine],
                   default=IoEngine.URING.value,
                   help="how the hot path does READ and WRITE straight into guest memory: "
                        "uring submits each poll round's READs to a per-queue io_uring in "
                        "batches, WRITE is a pwritev on the queue's thread; uring-rw submits "
                        "WRITEs too (for file systems with non-blocking buffered writes, or "
                        "O_DIRECT files: on ext4 each buffered write is handed to a kernel "
                        "worker thread, several times slower); sync does one preadv/pwritev "
                        "each (default uring; sync is also used where io_uring is refused)")
    p.add_argument("--fixed-buffers", action="store_true",
                   help="register guest memory with each queue's io_uring, so a READ or WRITE "
                        "into one guest buffer is a READ_FIXED/WRITE_FIXED and its pages are "
                        "not pinned per I/O (for O_DIRECT files, see --allow-direct-io; "
                        "buffered I/O copies through the page cache either way). "
                        "Registering pins all of guest memory, so the host backs every page "
                        "of it at once, and a ring serves nothing until then (seconds per GiB "
                        "not yet backed: pair it with prealloc=on); the sandbox keeps "
                        "CAP_IPC_LOCK for it and "
                        "RLIMIT_MEMLOCK is lifted where allowed (default: off)")
    p.add_argument("--poll-us", type=int, default=0, metavar="US",
                   help="keep polling a queue for US microseconds after it runs dry before "
                        "sleeping on its kick eventfd, and stretch or shrink the window by "
                        "how often polling pays off (default 0: sleep at once, no CPU spent "
                        "waiting)")
    p.add_argument("--dax-window-size", type=parse_size, default=0, metavar="SIZE",
                   help="offer a DAX cache window of SIZE bytes (suffixes K, M, G; e.g. 8G) to "
                        "frontends that support VIRTIO shared memory (default: none)")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user backend capabilities as JSON and exit")
    # The Rust virtiofsd's migration options.  fastvfs keeps no device state for a frontend
    # to migrate (no VHOST_USER_PROTOCOL_F_DEVICE_STATE, no "migrate-precopy"), so they are
    # checked as there and have no effect.
    p.add_argument("--migration-mode", choices=["find-paths", "file-handles"],
                   default="find-paths",
                   help="no effect: fastvfs does not migrate its state (accepted as the Rust "
                        "virtiofsd takes it)")
    p.add_argument("--migration-on-error", choices=["abort", "guest-error"], default="abort",
                   help="no effect, as --migration-mode")
    p.add_argument("--migration-verify-handles", action="store_true",
                   help="no effect, as --migration-mode")
    p.add_argument("--migration-confirm-paths", action="store_true",
                   help="no effect, as --migration-mode")
    p.add_argument("-o", dest="compat_options", action="append", default=[], metavar="OPTS",
                   help="options in the legacy form, comma-separated: source=DIR, cache=, "
                        "xattr, no_xattr, xattrmap=, writeback, no_writeback, readdirplus, "
                        "no_readdirplus, allow_direct_io, announce_submounts, killpriv_v2, "
                        "no_killpriv_v2, posix_lock, no_posix_lock, flock, no_flock, "
                        "posix_acl, security_label, no_security_label, sandbox=, modcaps=, "
                        "loglevel=")
    p.add_argument("-d", dest="compat_debug", action="store_true",
                   help="the same as --log-level debug (legacy)")
    p.add_argument("-f", dest="compat_foreground", action="store_true",
                   help="no effect: fastvfs always runs in the foreground (legacy)")
    add_fs_options(p)
    add_sandbox_options(p)
    p.add_argument("--syslog", action="store_true", help="log to syslog instead of stderr")
    p.add_argument("--stats-socket", metavar="PATH",
                   help="control socket for 'fastvfs stats' (default: SOCKET_PATH.stats)")
    p.add_argument("--metrics-socket", metavar="PATH",
                   help="serve Prometheus text-format metrics on this Unix socket")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="also serve the Prometheus metrics over HTTP on this TCP address "
                        "(e.g. 127.0.0.1:9101)")
    p.add_argument("--metrics-interval", type=float, default=0, metavar="SECONDS",
                   help="log a line of request counts and latencies every SECONDS (default off)")
    return p


def add_sandbox_options(p):
    p.add_argument("--sandbox", default="namespace", choices=["namespace", "chroot", "none"],
                   help="isolation of the daemon once a frontend has connected: namespace "
                        "(default; new mount, pid and network namespaces, the shared directory "
                        "as /), chroot (into the shared directory), none")
    p.add_argument("--seccomp", default="kill", choices=["kill", "log", "trap", "none"],
                   help="action for a system call outside the daemon's allow-list (default kill)")
    p.add_argument("--modcaps", metavar="CAPS",
                   help="change the capabilities kept, e.g. +sys_admin:-mknod")
    p.add_argument("--uid-map", action="append", default=[], type=_id_map,
                   metavar=":NAMESPACE_UID:HOST_UID:COUNT:",
                   help="for a daemon not started as root: map COUNT host uids from HOST_UID "
                        "on to NAMESPACE_UID on in its user namespace, through newuidmap "
                        "(repeatable; default: the daemon's own uid as 0)")
    p.add_argument("--gid-map", action="append", default=[], type=_id_map,
                   metavar=":NAMESPACE_GID:HOST_GID:COUNT:",
                   help="the same for gids, through newgidmap (default: the daemon's own gid "
                        "as 0)")


def _id_map(text):
    from .sandbox import IdMap
    try:
        return IdMap(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None



def parse_size(text):
    """'8G', '512M', '4096', '2MiB' -> bytes; a positive multiple of 4 KiB or 0."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = int(t[:len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value < 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"size {text!r} is not a multiple of 4 KiB")
    return value


def mount_parser():
    p = argparse.ArgumentParser(prog="fastvfs mount",
                                description="serve SHARED_DIR at MOUNTPOINT through /dev/fuse",
                                formatter_class=_HelpFormatter)
    p.add_argument("shared_dir", metavar="SHARED_DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--threads", type=int, default=4, help="request reader threads (default 4)")
    add_fs_options(p)
    return p


def share_options(p, ns, *, thread_pool_size=0):
    """The ``ShareOptions`` of either command line's parsed arguments (``add_fs_options``);
    a bad value ends the program through ``p.error``.  The ``mount`` form has no
    ``--thread-pool-size``: the vhost-user form passes its value."""
    shared_dir = os.path.abspath(ns.shared_dir)
    if not os.path.isdir(shared_dir):
        p.error(f"shared directory {shared_dir!r} is not a directory")
    file_handles = InodeFileHandles(ns.inode_file_handles)
    if file_handles is InodeFileHandles.MANDATORY:
        from .fs import _sys
        fd = os.open(shared_dir, os.O_PATH | os.O_CLOEXEC)
        try:
            _sys.name_to_handle(fd)
        except OSError as exc:
            p.error(f"--inode-file-handles=mandatory: {shared_dir!r} is on a file "
                    f"system without file handles ({exc.strerror})")
        finally:
            os.close(fd)
    xattrmap = None
    if ns.xattrmap is not None:
        from .fs.xattrmap import XattrMap
        try:
            xattrmap = XattrMap(ns.xattrmap)
        except ValueError as exc:
            p.error(str(exc))
    return _build(p, ShareOptions, shared_dir=shared_dir, cache=ns.cache,
                  writeback=ns.writeback, allow_direct_io=ns.allow_direct_io,
                  allow_mmap=ns.allow_mmap, preserve_noatime=ns.preserve_noatime,
                  security_label=ns.security_label, readdirplus=not ns.no_readdirplus,
                  xattr=ns.xattr, xattrmap=xattrmap, posix_acl=ns.posix_acl,
                  posix_lock=ns.posix_lock, flock=ns.flock, readonly=ns.readonly,
                  announce_submounts=ns.announce_submounts,
                  inode_file_handles=file_handles,
                  killpriv_v2=ns.killpriv_v2, translate_uid=tuple(ns.translate_uid),
                  translate_gid=tuple(ns.translate_gid), thread_pool_size=thread_pool_size,
                  trace=ns.log_level == "trace")


def daemon_options(p, ns):
    """The ``DaemonOptions`` of the vhost-user command line's parsed arguments (``-o`` forms
    applied); a bad value ends the program through ``p.error``."""
    if ns.socket_path is None and ns.fd is None:
        p.error("one of --socket-path or --fd is required")
    if not ns.shared_dir:
        p.error("--shared-dir (or -o source=DIR) is required")
    if ns.socket_path is not None:
        parent = os.path.dirname(os.path.abspath(ns.socket_path))
        if not os.path.isdir(parent):
            p.error(f"--socket-path: directory {parent!r} does not exist")
    if ns.fd is not None:
        _check_listening_socket(p, ns.fd)
    if ns.modcaps is not None:
        from .sandbox import parse_modcaps
        try:
            parse_modcaps(ns.modcaps)
        except ValueError as exc:
            p.error(str(exc))
    share = share_options(p, ns, thread_pool_size=ns.thread_pool_size)
    ring = _build(p, RingOptions, io_engine=IoEngine(ns.io_engine), poll_us=ns.poll_us,
                  fixed_buffers=ns.fixed_buffers, read_only=share.readonly)
    return _build(p, DaemonOptions, share=share, ring=ring, socket_path=ns.socket_path,
                  fd=ns.fd, socket_group=ns.socket_group, tag=ns.tag,
                  request_queues=ns.request_queues, dax_window_size=ns.dax_window_size,
                  sandbox=ns.sandbox, seccomp=ns.seccomp, modcaps=ns.modcaps,
                  uid_map=tuple(ns.uid_map), gid_map=tuple(ns.gid_map),
                  rlimit_nofile=ns.rlimit_nofile, log_level=ns.log_level, syslog=ns.syslog,
                  stats_socket=ns.stats_socket, metrics_socket=ns.metrics_socket,
                  metrics_address=ns.metrics_address, metrics_interval=ns.metrics_interval,
                  migration_mode=ns.migration_mode, migration_on_error=ns.migration_on_error,
                  migration_verify_handles=ns.migration_verify_handles,
                  migration_confirm_paths=ns.migration_confirm_paths)


def mount_options(p, ns):
    """The ``MountOptions`` of the ``mount`` command line's parsed arguments; a bad value
    ends the program through ``p.error``."""
    if not os.path.isdir(ns.mountpoint):
        p.error(f"mount point {ns.mountpoint!r} is not a directory")
    return _build(p, MountOptions, share=share_options(p, ns), mountpoint=ns.mountpoint,
                  threads=ns.threads, rlimit_nofile=ns.rlimit_nofile, log_level=ns.log_level)


def _build(p, kind, **fields):
    """``kind(**fields)``, its ValueError (a broken invariant) reported as a usage error."""
    try:
        return kind(**fields)
    except ValueError as exc:
        p.error(str(exc))


def setup_logging(log_level, syslog=False):
    """Log at ``log_level`` (a ``LOG_LEVELS`` name) to stderr, or to syslog where one
    listens (else to stderr, saying so)."""
    if syslog:
        from logging.handlers import SysLogHandler
        try:
            _probe_syslog("/dev/log")
            handler = SysLogHandler(address="/dev/log")
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            print(f"fastvfs: cannot log to syslog ({exc}); logging to stderr", file=sys.stderr)
        handler.setFormatter(logging.Formatter("fastvfs[%(process)d]: %(levelname)s %(name)s: "
                                               "%(message)s"))
        logging.basicConfig(level=LOG_LEVELS[log_level], handlers=[handler])
    else:
        logging.basicConfig(level=LOG_LEVELS[log_level], stream=sys.stderr,
                            format="fastvfs[%(process)d] %(levelname)s %(name)s: %(message)s")


def _probe_syslog(address):
    """Raise OSError unless a syslog daemon accepts connections at ``address``.

    SysLogHandler ignores a failed connection when it is created (Python 3.11 on) and retries
    on every record, printing a traceback for each failure: the fallback to stderr has to be
    decided here, before the handler exists."""
    errors = []
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(address)
                return
            except OSError as exc:
                errors.append(exc)
    raise errors[0]


_COMPAT_FLAGS = {
    "xattr": ("xattr", True), "no_xattr": ("xattr", False),
    "readdirplus": ("no_readdirplus", False), "no_readdirplus": ("no_readdirplus", True),
    "writeback": ("writeback", True), "no_writeback": ("writeback", False),
    "allow_direct_io": ("allow_direct_io", True), "no_allow_direct_io": ("allow_direct_io", False),
    "announce_submounts": ("announce_submounts", True),
    "no_announce_submounts": ("announce_submounts", False),
    "killpriv_v2": ("killpriv_v2", True), "no_killpriv_v2": ("killpriv_v2", False),
    "posix_lock": ("posix_lock", True), "no_posix_lock": ("posix_lock", False),
    "flock": ("flock", True), "no_flock": ("flock", False),
    "posix_acl": ("posix_acl", True), "no_posix_acl": ("posix_acl", False),
    "security_label": ("security_label", True), "no_security_label": ("security_label", False),
    "readonly": ("readonly", True),
}
_COMPAT_VALUES = {
    "source": ("shared_dir", None),
    "cache": ("cache", {"auto": "auto", "always": "always", "none": "never", "never": "never",
                        "metadata": "metadata"}),
    "loglevel": ("log_level", {"debug": "debug", "info": "info", "warn": "warn", "err": "error",
                               "error": "error"}),
    "log_level": ("log_level", {"debug": "debug", "info": "info", "warn": "warn", "err": "error",
                                "error": "error"}),
    "sandbox": ("sandbox", {"namespace": "namespace", "chroot": "chroot", "none": "none"}),
    "modcaps": ("modcaps", None),
    "xattrmap": ("xattrmap", None),
    "thread_pool_size": ("thread_pool_size", int),
}


def apply_compat_options(p, options):
    """The legacy ``-o a,b=c`` forms the reference daemons still accept."""
    for line in options.compat_options:
        for item in filter(None, line.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                if key not in _COMPAT_FLAGS:
                    p.error(f"invalid compat argument '-o {item}'")
                attr, flag = _COMPAT_FLAGS[key]
                setattr(options, attr, flag)
                continue
            if key not in _COMPAT_VALUES:
                p.error(f"invalid compat argument '-o {item}'")
            attr, allowed = _COMPAT_VALUES[key]
            if isinstance(allowed, dict):
                if value not in allowed:
                    p.error(f"invalid compat value '{value}' for '-o {key}'")
                value = allowed[value]
            elif allowed is int:
                try:
                    value = int(value)
                except ValueError:
                    p.error(f"invalid compat value '{value}' for '-o {key}'")
            setattr(options, attr, value)
    if options.compat_debug:
        options.log_level = "debug"


def _check_listening_socket(p, fd):
    """``--fd N`` must be an inherited Unix socket that listens (as libvirt and Kata pass it)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        p.error(f"--fd {fd}: {exc.strerror}")
    if not stat_mod.S_ISSOCK(mode):
        p.error(f"--fd {fd} is not a socket")
    sock = socket.socket(fileno=os.dup(fd))
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        family = sock.family
    finally:
        sock.close()
    if family != socket.AF_UNIX or not listening:
        p.error(f"--fd {fd} is not a listening Unix socket")


def capabilities():
    """What --print-capabilities says (QEMU's docs/interop/vhost-user.json, type "fs"): exactly
    the features served.  "separate-options": libvirt then passes --shared-dir/--cache/...
    (and refuses a domain's lock settings, for which no feature exists).  Not
    "migrate-precopy": no backend state is offered for migration (no
    VHOST_USER_PROTOCOL_F_DEVICE_STATE)."""
    return {"type": "fs", "features": ["separate-options"]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "mount":
        p = mount_parser()
        options = mount_options(p, p.parse_args(argv[1:]))
        setup_logging(options.log_level)
        from .daemon import run_mount
        return run_mount(options)
    if argv and argv[0] == "stats":
        from .stats import stats_main
        return stats_main(argv[1:])
    if argv and argv[0] == "descriptor":
        from .descriptor import descriptor_main
        return descriptor_main(argv[1:])
    p = parser()
    ns = p.parse_args(argv)
    apply_compat_options(p, ns)
    if ns.print_capabilities:
        print(json.dumps(capabilities(), indent=2))
        return 0
    options = daemon_options(p, ns)
    setup_logging(options.log_level, options.syslog)
    from .daemon import run
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
