"""The /dev/fuse transport: the same FUSE engine, served to the host kernel.

``FuseMount`` opens /dev/fuse, mounts it at a directory and serves requests with a few reader
threads (the kernel hands each request to exactly one reader).  Replies are written back to
the device; a request answered later (a waiting lock) writes its reply from its own thread.
Unmounting (or a signal, which unmounts) ends the readers.
"""

import ctypes
import errno
import logging
import os
import stat
import threading

from ..fuse import abi

log = logging.getLogger("fastvfs.fusedev")

MNT_DETACH = 2
MS_NOSUID = 2
MS_NODEV = 4
# A request is at most one max_write of data plus headers.
READ_BUFFER = (1 << 20) + (1 << 16)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _oserror(what):
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


class DeviceReply:
    """A reply sent later (``FuseEngine`` deferral) to a request read from /dev/fuse."""

    def __init__(self, mount, unique):
        self.mount = mount
        self.unique = unique
        self.done = False

    def complete(self, error, payload=b""):
        if self.done:
            return False
        self.done = True
        return self.mount.reply(self.unique, error, payload)


class FuseMount:
    def __init__(self, engine, mountpoint, *, threads=4, fsname="fastvfs"):
        self.engine = engine
        self.mountpoint = os.path.abspath(mountpoint)
        self.threads = threads
        self.fsname = fsname
        self.fd = None
        self.readers = []
        self.mounted = False

    def mount(self):
        root_mode = stat.S_IFMT(os.stat(self.mountpoint).st_mode)
        if not stat.S_ISDIR(root_mode):
            raise NotADirectoryError(self.mountpoint)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        # default_permissions: the kernel checks permissions, as the virtiofs driver always does.
        options = (f"fd={self.fd},rootmode={stat.S_IFDIR:o},user_id={os.geteuid()},"
                   f"group_id={os.getegid()},default_permissions,allow_other")
        if _libc.mount(self.fsname.encode(), self.mountpoint.encode(),
                       b"fuse." + self.fsname.encode(), MS_NOSUID | MS_NODEV,
                       options.encode()) != 0:
            error = _oserror(f"mount {self.mountpoint}")
            os.close(self.fd)
            self.fd = None
            raise error
        self.mounted = True
        log.info("mounted on %s", self.mountpoint)

    def serve(self):
        """Serve until the file system is unmounted."""
        self.readers = [threading.Thread(target=self._reader, name=f"fastvfs-fuse{i}",
                                         daemon=True) for i in range(self.threads)]
        for t in self.readers:
            t.start()
        for t in self.readers:
            t.join()

    def _reader(self):
        while True:
            try:
                request = os.read(self.fd, READ_BUFFER)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if exc.errno != errno.ENODEV:  # ENODEV: unmounted
                    log.error("reading /dev/fuse: %s", exc)
                return
            if len(request) < abi.IN_HEADER_SIZE:
                continue
            unique = abi.in_header.unpack_from(request)[2]
            result = self.engine.handle(request, READ_BUFFER)
            if result is None:
                continue
            if callable(result):
                result(DeviceReply(self, unique))
                continue
            self.reply(unique, *result)

    def reply(self, unique, error, payload=b""):
        head = abi.out_header.pack(abi.OUT_HEADER_SIZE + len(payload), error, unique)
        try:
            os.writev(self.fd, [head, payload] if payload else [head])
            return True
        except OSError as exc:
            # ENOENT: the kernel gave up on the request (interrupted); nothing to do.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("replying to request %d: %s", unique, exc)
            return False

    def unmount(self):
        if self.mounted:
            if _libc.umount2(self.mountpoint.encode(), MNT_DETACH) != 0:
                log.warning("%s", _oserror(f"unmount {self.mountpoint}"))
            self.mounted = False
            log.info("unmounted %s", self.mountpoint)

    def close(self):
        self.unmount()
        for t in self.readers:
            t.join(5)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
