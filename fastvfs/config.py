"""The daemon's configuration as typed, immutable values.

The command line (``fastvfs.cli``) builds these once, from either of its forms (vhost-user or
``mount``), and hands them down whole: ``DaemonOptions`` to the vhost-user daemon,
``MountOptions`` to the /dev/fuse one; each holds the ``ShareOptions`` of the file system and
FUSE engine, and the daemon's holds the ``RingOptions`` of its virtqueue workers.  Defaults are
the command line's.  A value that breaks an invariant is refused with ``ValueError`` when the
object is built, with the message the command line shows.

This module is a leaf: every layer may import it, and it imports nothing of fastvfs.  Fields
that hold parsed objects of other layers (``xattrmap``, ``translate_uid``, ``uid_map``) take
them already parsed; their types are named in the field descriptions only.
"""

import enum


class FrozenError(AttributeError):
    """An option object's fields are set once, when it is built."""


class _Default:
    """A field default made afresh for each object (a nested option object)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


class _Record:
    """An immutable record of the class's annotated fields: built by position or keyword with
    the class attributes as defaults, then checked by ``__post_init__``; compared and hashed
    by value.  What ``dataclasses.dataclass(frozen=True, slots=True)`` gives, without
    importing ``dataclasses``, whose ``inspect`` and ``ast`` would cost every daemon's
    start-up more than the rest of its configuration (see ``_record``)."""

    __slots__ = ()
    _fields = ()
    _defaults = {}

    def __init__(self, *args, **kwargs):
        kind = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{kind}() takes at most {len(self._fields)} positional arguments")
        values = dict(zip(self._fields, args))
        for name, value in kwargs.items():
            if name not in self._fields or name in values:
                raise TypeError(f"{kind}() got an unexpected or repeated argument {name!r}")
            values[name] = value
        for name in self._fields:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{kind}() missing argument {name!r}")
                default = self._defaults[name]
                values[name] = default.make() if isinstance(default, _Default) else default
            object.__setattr__(self, name, values[name])
        self.__post_init__()

    def __post_init__(self):
        pass

    def __setattr__(self, name, value):
        raise FrozenError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name):
        raise FrozenError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def _values(self):
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other):
        return type(other) is type(self) and self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields) + ")"


def _record(cls):
    """``cls`` as a ``_Record`` of its annotated fields, in order, with slots."""
    names = tuple(cls.__dict__.get("__annotations__", {}))
    body = {key: value for key, value in cls.__dict__.items()
            if key not in names and key not in ("__dict__", "__weakref__")}
    body.update(__slots__=names, _fields=names,
                _defaults={name: cls.__dict__[name] for name in names if name in cls.__dict__})
    return type(cls.__name__, (_Record,), body)


def replace(options, **changes):
    """A copy of ``options`` with ``changes`` (checked again, as a new object is)."""
    return type(options)(**{**{name: getattr(options, name) for name in options._fields},
                            **changes})


class IoEngine(enum.Enum):
    """``--io-engine``: how a virtqueue worker does READ and WRITE into guest memory (in the
    order ``--help`` lists them)."""

    #: READs go to a per-queue io_uring in batches; WRITE is a pwritev on the queue's thread.
    URING = "uring"
    #: READs and WRITEs both go to the per-queue io_uring.
    URING_RW = "uring-rw"
    #: One preadv/pwritev per request on the queue's thread.
    SYNC = "sync"

    @property
    def uses_uring(self):
        """Whether the worker sets up an io_uring (it falls back to sync where refused)."""
        return self is not IoEngine.SYNC

    @property
    def uring_writes(self):
        """Whether WRITEs, not only READs, are submitted to the io_uring."""
        return self is IoEngine.URING_RW


class InodeFileHandles(enum.Enum):
    """``--inode-file-handles``: how the file system holds the inodes the guest knows (in the
    order ``--help`` lists them)."""

    #: An O_PATH descriptor per inode.
    NEVER = "never"
    #: File handles where the host file system has them, descriptors elsewhere.
    PREFER = "prefer"
    #: The same as PREFER (the Rust virtiofsd's name).
    FALLBACK = "fallback"
    #: File handles only: a lookup on a file system without them fails with EOPNOTSUPP.
    MANDATORY = "mandatory"

    @property
    def fs_mode(self):
        """The mode as ``PassthroughFs(file_handles=...)`` takes it: never, prefer, mandatory."""
        return "prefer" if self is InodeFileHandles.FALLBACK else self.value

    @property
    def uses_handles(self):
        """Whether any inode may be held by file handle (open_by_handle_at needs
        CAP_DAC_READ_SEARCH, and the node id table is sized for it)."""
        return self is not InodeFileHandles.NEVER


CACHE_MODES = ("never", "none", "auto", "metadata", "always")


@_record
class ShareOptions:
    """What the file system (``PassthroughFs``) and the FUSE engine (``FuseEngine``) serve,
    the same for every transport.

    ``shared_dir``: the shared directory, an absolute path (required).
    ``cache``: client caching, one of ``CACHE_MODES`` (``none`` is ``never``); default auto.
    ``writeback``: offer FUSE_WRITEBACK_CACHE; default off.
    ``allow_direct_io``: honour the client's O_DIRECT on the host; default off.
    ``allow_mmap``: offer FUSE_DIRECT_IO_ALLOW_MMAP; default off.
    ``preserve_noatime``: honour the client's O_NOATIME on the host; default off.
    ``security_label``: offer FUSE_SECURITY_CTX; default off; implies ``xattr``.
    ``readdirplus``: offer READDIRPLUS (never with cache never); default on.
    ``xattr``: serve extended attributes; default off, forced on by ``posix_acl``,
      ``security_label`` and ``xattrmap``.
    ``xattrmap``: a ``fastvfs.fs.xattrmap.XattrMap`` of the name rules, or None (default).
    ``posix_acl``: offer FUSE_POSIX_ACL; default off; implies ``xattr``.
    ``posix_lock``: serve POSIX record locks as host OFD locks; default on.
    ``flock``: serve flock() locks; default on.
    ``readonly``: refuse every change with EROFS; default off.
    ``announce_submounts``: offer FUSE_SUBMOUNTS; default on.
    ``inode_file_handles``: an ``InodeFileHandles``; default NEVER.
    ``killpriv_v2``: offer FUSE_HANDLE_KILLPRIV_V2; default off.
    ``translate_uid``, ``translate_gid``: ``fastvfs.fs.idmap.Rule`` tuples, first match wins;
      default none (identity).
    ``thread_pool_size``: threads serving the requests that may block; default 0 (each
      queue's own thread); never negative.
    ``trace``: log every request (``--log-level trace``); default off.
    """

    shared_dir: str
    cache: str = "auto"
    writeback: bool = False
    allow_direct_io: bool = False
    allow_mmap: bool = False
    preserve_noatime: bool = False
    security_label: bool = False
    readdirplus: bool = True
    xattr: bool = False
    xattrmap: object = None
    posix_acl: bool = False
    posix_lock: bool = True
    flock: bool = True
    readonly: bool = False
    announce_submounts: bool = True
    inode_file_handles: InodeFileHandles = InodeFileHandles.NEVER
    killpriv_v2: bool = False
    translate_uid: tuple = ()
    translate_gid: tuple = ()
    thread_pool_size: int = 0
    trace: bool = False

    def __post_init__(self):
        if self.cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {self.cache!r}")
        # Given as a string too ("prefer"); an unknown one raises ValueError.
        _coerce(self, "inode_file_handles", InodeFileHandles)
        _coerce(self, "translate_uid", tuple)
        _coerce(self, "translate_gid", tuple)
        if self.thread_pool_size < 0:
            raise ValueError("--thread-pool-size must not be negative")
        if self.posix_acl or self.security_label or self.xattrmap is not None:
            object.__setattr__(self, "xattr", True)


@_record
class RingOptions:
    """What each virtqueue worker (the hot path's ``Virtqueue``) needs.

    ``max_io``: the largest READ or WRITE served, in bytes; default 1 MiB (the max_write
      offered at FUSE_INIT).
    ``attr_timeout``: seconds the attributes the hot path answers GETATTR with stay valid:
      the cache mode's timeout; default 0.
    ``io_engine``: an ``IoEngine``; default URING.
    ``poll_us``: microseconds a worker keeps polling its ring after it runs dry; default 0.
    ``fixed_buffers``: register guest memory with each queue's io_uring; default off.
    ``read_only``: a read-only share: WRITE and FALLOCATE are left to the engine's EROFS;
      default off.
    ``open_flags``: the fuse_open_out flags (FOPEN_*) the hot path answers OPEN with: the
      cache mode's; default 0.
    ``opendir_flags``: the same for OPENDIR; default 0.
    ``engine_pool``: the engine runs requests on a thread pool (``--thread-pool-size``): a
      request that may hold the queue's thread for long never runs on it (FSYNC, FSYNCDIR and
      FALLOCATE go to the queue's io_uring, else to the engine; SYNCFS to the engine);
      default off.
    """

    max_io: int = 1 << 20
    attr_timeout: float = 0.0
    io_engine: IoEngine = IoEngine.URING
    poll_us: int = 0
    fixed_buffers: bool = False
    read_only: bool = False
    open_flags: int = 0
    opendir_flags: int = 0
    engine_pool: bool = False

    def __post_init__(self):
        _coerce(self, "io_engine", IoEngine)
        if self.max_io <= 0:
            raise ValueError("max_io must be positive")


@_record
class DaemonOptions:
    """The vhost-user daemon: the process, its sockets, and the share and rings it serves.

    ``share``: the ``ShareOptions``.  ``ring``: the ``RingOptions``; the daemon starts the
      rings with its ``attr_timeout``, ``open_flags`` and ``opendir_flags`` set from the share's cache mode and
      its ``read_only`` from the share's ``readonly``.
    ``socket_path``: the vhost-user socket to create; ``fd``: an inherited listening socket;
      exactly one of them is given.
    ``socket_group``: group owning ``socket_path`` (not with ``fd``); default None (root only).
    ``tag``: the file system tag offered in the device configuration, 1 to 36 bytes; default
      None (the frontend's).
    ``request_queues``: most request queues offered, 1 to 254; default 16.
    ``dax_window_size``: bytes of the DAX cache window, a multiple of 4 KiB; default 0 (none).
    ``sandbox``: namespace (default), chroot or none.
    ``seccomp``: action for a system call outside the allow-list: kill (default), log, trap,
      none.
    ``modcaps``: changes to the capabilities kept (``+sys_admin:-mknod``); default None.
    ``uid_map``, ``gid_map``: ``fastvfs.sandbox.IdMap`` tuples for a daemon not started as
      root; default none.
    ``rlimit_nofile``: the open-file limit wanted; 0 leaves it; default 1000000.
    ``log_level``: one of the reference daemons' level names; default info.
    ``syslog``: log to syslog; default off.
    ``stats_socket``: the ``fastvfs stats`` socket; default None (SOCKET_PATH.stats).
    ``metrics_socket``, ``metrics_address``: Prometheus metrics on a Unix socket, over HTTP
      on HOST:PORT; default None.
    ``metrics_interval``: seconds between logged statistics lines; default 0 (off).
    ``migration_mode`` (find-paths, the default, or file-handles), ``migration_on_error``
      (abort, the default, or guest-error), ``migration_verify_handles``,
      ``migration_confirm_paths``: the Rust virtiofsd's migration options, checked as there
      and without effect (no device state is offered for migration).
    """

    share: ShareOptions
    ring: RingOptions = _Default(RingOptions)
    socket_path: str | None = None
    fd: int | None = None
    socket_group: str | None = None
    tag: str | None = None
    request_queues: int = 16
    dax_window_size: int = 0
    sandbox: str = "namespace"
    seccomp: str = "kill"
    modcaps: str | None = None
    uid_map: tuple = ()
    gid_map: tuple = ()
    rlimit_nofile: int = 1_000_000
    log_level: str = "info"
    syslog: bool = False
    stats_socket: str | None = None
    metrics_socket: str | None = None
    metrics_address: str | None = None
    metrics_interval: float = 0
    migration_mode: str = "find-paths"
    migration_on_error: str = "abort"
    migration_verify_handles: bool = False
    migration_confirm_paths: bool = False

    def __post_init__(self):
        _coerce(self, "uid_map", tuple)
        _coerce(self, "gid_map", tuple)
        if self.socket_path is None and self.fd is None:
            raise ValueError("one of --socket-path or --fd is required")
        if self.socket_path is not None and self.fd is not None:
            raise ValueError("--socket-path and --fd exclude each other")
        if self.socket_group is not None and self.fd is not None:
            raise ValueError("--socket-group applies to --socket-path only")
        if not 1 <= self.request_queues <= 254:
            raise ValueError("--request-queues must be between 1 and 254")
        if self.tag is not None and not 0 < len(self.tag.encode()) <= 36:
            raise ValueError("--tag must be 1 to 36 bytes")
        if self.dax_window_size < 0 or self.dax_window_size % 4096:
            raise ValueError("--dax-window-size must be a multiple of 4 KiB")
        if self.migration_mode == "file-handles" and (self.migration_verify_handles or
                                                      self.migration_confirm_paths):
            raise ValueError("--migration-verify-handles and --migration-confirm-paths apply "
                             "to --migration-mode=find-paths only")

    @property
    def migration_options_given(self):
        """Whether any migration option differs from its default (they have no effect)."""
        return (self.migration_mode != "find-paths" or self.migration_on_error != "abort" or
                self.migration_verify_handles or self.migration_confirm_paths)


@_record
class MountOptions:
    """The /dev/fuse daemon (``fastvfs mount``): the share served to the host kernel.

    ``share``: the ``ShareOptions``.  ``mountpoint``: the directory mounted on (required).
    ``threads``: request reader threads, at least 1; default 4.
    ``rlimit_nofile``, ``log_level``: as ``DaemonOptions``.
    """

    share: ShareOptions
    mountpoint: str
    threads: int = 4
    rlimit_nofile: int = 1_000_000
    log_level: str = "info"

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError("--threads must be at least 1")


def _coerce(instance, name, kind):
    """Store field ``name`` of a frozen ``instance`` as ``kind`` (the enum, or tuple for a
    sequence given as a list)."""
    value = getattr(instance, name)
    if not isinstance(value, kind):
        object.__setattr__(instance, name, kind(value))
