#!/usr/bin/env python3
"""Ordinary file work in a directory, summarised as a JSON manifest of outcomes.

Run it once on a host directory and once inside a guest on the shared filesystem: the two
manifests must be equal, key for key. Everything recorded is deterministic for a given kind of
underlying filesystem: contents (sha256), sizes, modes, owners, link counts, explicit timestamps,
errno names (never messages) and directory listings. Values that legitimately differ between the
two runs (inode numbers, devices, atime/ctime, "now" timestamps, free space, durations) are kept
out of the comparison, under the top-level key "volatile".

Usage: workload.py DIR [OUTPUT.json]     (DIR must not exist or be empty; must run as root)

Environment:
  WORKLOAD_STEPS         comma-separated subset of steps to run (default: all)
  WORKLOAD_SKIP          comma-separated steps to leave out
  WORKLOAD_BIGDIR_COUNT  entries in the big directory (default 10000)
  WORKLOAD_SRC_TREE      directories (os.pathsep-separated) for the "copytree" step (default: skip)
"""

import ctypes
import errno
import filecmp
import hashlib
import json
import mmap
import os
import random
import shutil
import socket
import stat
import sys
import time
import traceback

MiB = 1 << 20
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
# Left out of source-tree copies: bytecode caches change under us, site-packages is not stdlib.
COPY_IGNORE = ("__pycache__", "site-packages")

libc = ctypes.CDLL(None, use_errno=True)
STEPS = {}
volatile = {"durations": {}, "errors": {}}


def step(fn):
    STEPS[fn.__name__] = fn
    return fn


# --- helpers ---------------------------------------------------------------------------------


def errname(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def attempt(fn, *args, **kwargs):
    """'OK' or the errno name of the OSError raised."""
    try:
        fn(*args, **kwargs)
        return "OK"
    except OSError as exc:
        return errname(exc)


def attempt_open(path, flags, mode=0o644):
    try:
        os.close(os.open(path, flags, mode))
        return "OK"
    except OSError as exc:
        return errname(exc)


def libc_call(name, *args):
    """Call a libc function that returns -1/errno; 'OK' or the errno name."""
    if getattr(libc, name)(*args) == 0:
        return "OK"
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def renameat2(old, new, flags):
    return libc_call("renameat2", AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                     ctypes.c_uint(flags))


def fallocate(fd, mode, offset, length):
    return libc_call("fallocate", fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length))


def kind(mode):
    for test, name in ((stat.S_ISREG, "reg"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "lnk"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                       (stat.S_ISSOCK, "sock")):
        if test(mode):
            return name
    return "unknown"


def view(st):
    """The comparable part of a stat result (directory sizes depend on history, so not those)."""
    out = {"type": kind(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
           "uid": st.st_uid, "gid": st.st_gid}
    if not stat.S_ISDIR(st.st_mode):
        out.update(nlink=st.st_nlink, size=st.st_size)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        out["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    return out


def sha(data):
    return hashlib.sha256(data).hexdigest()


def write(path, data, mode=0o644):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def stat_or_errno(path, follow=True):
    try:
        return view(os.stat(path, follow_symlinks=follow))
    except OSError as exc:
        return errname(exc)


def sparse(st):
    return st.st_blocks * 512 < st.st_size


def tree_manifest(root, times=False):
    """relative path -> type/mode/owner/size/sha256/link target for everything under root.
    FIFOs and devices are never opened. With ``times``, also mtime_ns (for copies whose times
    were set explicitly)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entry = view(st)
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = sha(read(path))
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            if times and not stat.S_ISLNK(st.st_mode):
                entry["mtime_ns"] = st.st_mtime_ns
            out[os.path.relpath(path, root)] = entry
    return out


# --- steps -----------------------------------------------------------------------------------
# Each step works in its own fresh directory and returns a JSON-able dict of outcomes.

DATA = b"".join(b"line %05d of some ordinary text\n" % i for i in range(1000))


@step
def create_write_read(d):
    p = os.path.join(d, "file")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    written = os.write(fd, DATA)
    os.close(fd)
    r = {"written": written, "stat": view(os.stat(p)), "sha": sha(read(p))}
    fd = os.open(p, os.O_RDWR)
    os.pwrite(fd, b"XYZ", 5)
    r["pread"] = os.pread(fd, 16, 0).hex()
    r["pread_at_eof"] = len(os.pread(fd, 16, len(DATA)))
    r["read_chunks"] = [len(os.read(fd, 10000)) for _ in range(5)]
    os.close(fd)
    r["sha_after_pwrite"] = sha(read(p))
    write(os.path.join(d, "private"), b"x", 0o600)
    write(os.path.join(d, "umasked"), b"x", 0o777)
    r["mode_0600"] = view(os.stat(os.path.join(d, "private")))
    r["mode_0777_umask_022"] = view(os.stat(os.path.join(d, "umasked")))
    r["truncate_on_open"] = attempt_open(p, os.O_WRONLY | os.O_TRUNC)
    r["size_after_o_trunc"] = os.stat(p).st_size
    r["open_missing"] = attempt_open(os.path.join(d, "missing"), os.O_RDONLY)
    r["open_dir_for_write"] = attempt_open(d, os.O_WRONLY)
    r["open_file_as_dir"] = attempt_open(p, os.O_RDONLY | os.O_DIRECTORY)
    r["empty_file"] = attempt_open(os.path.join(d, "empty"), os.O_CREAT | os.O_WRONLY)
    r["empty_stat"] = view(os.stat(os.path.join(d, "empty")))
    write(p, DATA)
    return r


@step
def append(d):
    p = os.path.join(d, "log")
    write(p, b"a" * 100)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"b" * 50)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"c" * 10)  # O_APPEND ignores the seek
    os.close(fd)
    with open(p, "ab") as f:
        f.write(b"d" * 5)
    data = read(p)
    return {"size": len(data), "sha": sha(data), "tail": data[-20:].decode()}


@step
def truncate(d):
    p = os.path.join(d, "file")
    write(p, DATA[:100])
    r = {}
    os.truncate(p, MiB)
    st = os.stat(p)
    data = read(p)
    r["up"] = {"size": st.st_size, "sparse": sparse(st), "head": sha(data[:100]),
               "tail_zero": data[100:] == bytes(MiB - 100)}
    os.truncate(p, 10)
    r["down"] = {"size": os.stat(p).st_size, "content": read(p).decode()}
    fd = os.open(p, os.O_RDWR)
    os.ftruncate(fd, 5000)
    r["ftruncate_up"] = os.fstat(fd).st_size
    os.ftruncate(fd, 3)
    r["ftruncate_down"] = {"size": os.fstat(fd).st_size, "content": os.pread(fd, 100, 0).decode()}
    os.close(fd)
    r["missing"] = attempt(os.truncate, os.path.join(d, "missing"), 0)
    r["directory"] = attempt(os.truncate, d, 0)
    r["negative"] = attempt(os.truncate, p, -1)
    return r


@step
def sparse_file(d):
    p = os.path.join(d, "sparse")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, b"x", 4 * MiB)
    os.pwrite(fd, b"y", 8 * MiB)
    os.fsync(fd)
    os.close(fd)
    st = os.stat(p)
    data = read(p)
    return {"size": st.st_size, "sparse": sparse(st), "sha": sha(data),
            "hole_is_zero": data[MiB:2 * MiB] == bytes(MiB)}


@step
def exclusive_create(d):
    p = os.path.join(d, "file")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    r = {"new": attempt_open(p, flags), "existing": attempt_open(p, flags)}
    os.symlink("nowhere", os.path.join(d, "dangling"))
    r["excl_on_dangling_symlink"] = attempt_open(os.path.join(d, "dangling"), flags)
    r["creat_through_dangling_symlink"] = attempt_open(os.path.join(d, "dangling"),
                                                       os.O_CREAT | os.O_WRONLY)
    r["symlink_target_created"] = os.path.exists(os.path.join(d, "nowhere"))
    r["excl_directory"] = attempt_open(d, flags)
    return r


@step
def rename(d):
    def j(name):
        return os.path.join(d, name)

    r = {}
    write(j("a"), b"A")
    write(j("b"), b"B")
    r["plain"] = attempt(os.rename, j("a"), j("c"))
    r["plain_result"] = [os.path.exists(j("a")), read(j("c")).decode()]
    r["over_existing"] = attempt(os.rename, j("c"), j("b"))
    r["over_existing_result"] = [os.path.exists(j("c")), read(j("b")).decode()]
    write(j("x"), b"X")
    r["noreplace_existing"] = renameat2(j("x"), j("b"), RENAME_NOREPLACE)
    r["noreplace_new"] = renameat2(j("x"), j("x2"), RENAME_NOREPLACE)
    write(j("y"), b"Y")
    r["exchange"] = renameat2(j("y"), j("b"), RENAME_EXCHANGE)
    r["exchange_result"] = [read(j("y")).decode(), read(j("b")).decode()]
    r["exchange_missing"] = renameat2(j("y"), j("nothere"), RENAME_EXCHANGE)
    for name in ("d1", "d2", "d3", "sub"):
        os.mkdir(j(name))
    write(j("d2/f"), b"f")
    r["dir_over_nonempty_dir"] = attempt(os.rename, j("d1"), j("d2"))
    r["dir_over_empty_dir"] = attempt(os.rename, j("d1"), j("d3"))
    r["file_over_dir"] = attempt(os.rename, j("b"), j("d2"))
    r["dir_over_file"] = attempt(os.rename, j("d3"), j("b"))
    r["dir_into_itself"] = attempt(os.rename, j("d2"), j("d2/inner"))
    r["missing"] = attempt(os.rename, j("missing"), j("z"))
    r["across_dirs"] = attempt(os.rename, j("x2"), j("sub/x2"))
    r["dir_across_dirs"] = attempt(os.rename, j("d2"), j("sub/d2"))
    r["listing"] = sorted(os.listdir(d))
    r["sub_listing"] = sorted(os.listdir(j("sub")))
    return r


@step
def hardlinks(d):
    f, g = os.path.join(d, "f"), os.path.join(d, "g")
    write(f, b"one")
    r = {"link": attempt(os.link, f, g)}
    r["nlink_after_link"] = [os.stat(f).st_nlink, os.stat(g).st_nlink]
    r["same_inode"] = os.stat(f).st_ino == os.stat(g).st_ino
    with open(g, "ab") as out:
        out.write(b" two")
    r["content_via_other_name"] = read(f).decode()
    r["link_to_existing_name"] = attempt(os.link, f, g)
    r["link_directory"] = attempt(os.link, d, os.path.join(d, "dirlink"))
    r["link_missing"] = attempt(os.link, os.path.join(d, "missing"), os.path.join(d, "h"))
    os.mkdir(os.path.join(d, "sub"))
    r["link_into_subdir"] = attempt(os.link, f, os.path.join(d, "sub", "f3"))
    r["nlink_three"] = os.stat(g).st_nlink
    os.unlink(f)
    r["nlink_after_unlink"] = [os.stat(g).st_nlink, os.path.exists(f)]
    return r


@step
def symlinks(d):
    def j(name):
        return os.path.join(d, name)

    write(j("file"), b"target content")
    os.mkdir(j("dir"))
    write(j("dir/inner"), b"inner")
    r = {"create": attempt(os.symlink, "file", j("link"))}
    r["readlink"] = os.readlink(j("link"))
    r["lstat"] = view(os.lstat(j("link")))
    r["stat"] = view(os.stat(j("link")))
    r["read_through"] = read(j("link")).decode()
    os.symlink("nowhere/at/all", j("dangling"))
    r["dangling_stat"] = stat_or_errno(j("dangling"))
    r["dangling_lstat"] = stat_or_errno(j("dangling"), follow=False)
    long_target = "/".join(["component"] * 100)
    os.symlink(long_target, j("long"))
    r["long_target_roundtrip"] = os.readlink(j("long")) == long_target
    r["long_lstat_size"] = os.lstat(j("long")).st_size
    r["existing_name"] = attempt(os.symlink, "file", j("link"))
    r["readlink_on_file"] = attempt(os.readlink, j("file"))
    os.symlink("dir", j("dirlink"))
    r["listdir_through_link"] = sorted(os.listdir(j("dirlink")))
    r["isdir_through_link"] = [os.path.isdir(j("dirlink")), os.path.islink(j("dirlink"))]
    os.symlink("loop2", j("loop1"))
    os.symlink("loop1", j("loop2"))
    r["loop_stat"] = stat_or_errno(j("loop1"))
    os.symlink("../file", j("dir/up"))
    r["relative_up"] = read(j("dir/up")).decode()
    return r


@step
def chmod(d):
    p = os.path.join(d, "file")
    write(p, b"x")
    r = {}
    for mode in (0o644, 0o600, 0o755, 0o4755, 0o2755, 0o6755, 0o1644, 0o000, 0o7777):
        os.chmod(p, mode)
        r[oct(mode)] = oct(stat.S_IMODE(os.stat(p).st_mode))
    os.chmod(p, 0o6755)
    with open(p, "ab") as f:
        f.write(b"root keeps setuid on write")
    r["setuid_after_root_write"] = oct(stat.S_IMODE(os.stat(p).st_mode))
    fd = os.open(p, os.O_RDONLY)
    os.fchmod(fd, 0o640)
    os.close(fd)
    r["fchmod"] = oct(stat.S_IMODE(os.stat(p).st_mode))
    sub = os.path.join(d, "sticky")
    os.mkdir(sub)
    os.chmod(sub, 0o1777)
    r["dir_sticky"] = oct(stat.S_IMODE(os.stat(sub).st_mode))
    r["missing"] = attempt(os.chmod, os.path.join(d, "missing"), 0o644)
    return r


@step
def chown(d):
    def j(name):
        return os.path.join(d, name)

    write(j("file"), b"x")
    r = {"chown": attempt(os.chown, j("file"), 1234, 5678), "after": view(os.stat(j("file")))}
    os.chown(j("file"), -1, 42)
    r["gid_only"] = view(os.stat(j("file")))
    os.chmod(j("file"), 0o6755)
    os.chown(j("file"), 1000, 1000)
    r["chown_clears_setid"] = oct(stat.S_IMODE(os.stat(j("file")).st_mode))
    os.symlink("file", j("link"))
    os.chown(j("link"), 2222, 3333, follow_symlinks=False)
    r["lchown_link"] = view(os.lstat(j("link")))
    r["lchown_target"] = view(os.stat(j("file")))
    fd = os.open(j("file"), os.O_RDONLY)
    os.fchown(fd, 77, 88)
    os.close(fd)
    r["fchown"] = view(os.stat(j("file")))
    # A setgid directory hands its group to new entries, and its setgid bit to new subdirectories.
    os.mkdir(j("shared"))
    os.chown(j("shared"), 0, 4321)
    os.chmod(j("shared"), 0o2775)
    write(j("shared/new"), b"x")
    os.mkdir(j("shared/newdir"))
    r["setgid_dir_file"] = view(os.stat(j("shared/new")))
    r["setgid_dir_subdir"] = view(os.stat(j("shared/newdir")))
    r["missing"] = attempt(os.chown, j("missing"), 1, 1)
    return r


@step
def other_user(d):
    """Objects made by an unprivileged user belong to that user, and that user is refused where
    the permissions say so; done in a child process that drops to uid 4321 / gid 1234.  The
    child works relative to its cwd, so the directories above ``d`` need not be searchable."""
    os.chmod(d, 0o777)
    os.mkdir(os.path.join(d, "closed"), 0o755)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(d)
            os.setgroups([])
            os.setgid(1234)
            os.setuid(4321)
            write("file", b"mine")
            os.mkdir("dir")
            os.symlink("file", "link")
            os.mkfifo("fifo")
            os.link("file", "hardlink")
            write("denied", attempt(os.mkdir, "closed/x").encode())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    r = {"child_status": status}
    for name in ("file", "dir", "link", "fifo", "hardlink", "denied"):
        r[name] = stat_or_errno(os.path.join(d, name), follow=False)
    r["denied_result"] = read(os.path.join(d, "denied")).decode()
    return r


@step
def utime(d):
    p = os.path.join(d, "file")
    write(p, b"x")
    r = {}
    for label, ns in (("small", (1_000_000_123, 2_000_000_456)),
                      ("recent", (1_700_000_000_123_456_789, 1_600_000_000_987_654_321)),
                      ("pre_epoch", (-1_000_000_000, -86_400_000_000_001))):
        r[label] = attempt(os.utime, p, ns=ns)
        st = os.stat(p)
        r[label + "_result"] = [st.st_atime_ns, st.st_mtime_ns]
    os.symlink("file", os.path.join(d, "link"))
    os.utime(os.path.join(d, "link"), ns=(3_000_000_000, 4_000_000_007), follow_symlinks=False)
    r["symlink_own_times"] = [os.lstat(os.path.join(d, "link")).st_mtime_ns,
                              os.stat(p).st_mtime_ns]
    os.utime(d, ns=(5_000_000_000, 6_000_000_000))
    r["dir"] = os.stat(d).st_mtime_ns
    # "now" comes from whichever clock the server uses: record only that it is near ours.
    before = time.time()
    os.utime(p)
    after = time.time()
    mtime = os.stat(p).st_mtime
    volatile["utime_now_offset_s"] = mtime - (before + after) / 2
    r["now_within_30s"] = before - 30 <= mtime <= after + 30
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with open(p, "ab") as f:
        f.write(b"y")
    r["write_updates_mtime"] = os.stat(p).st_mtime_ns > 1_000_000_000
    return r


@step
def directories(d):
    def j(name):
        return os.path.join(d, name)

    r = {"mkdir": attempt(os.mkdir, j("a"))}
    r["stat"] = view(os.stat(j("a")))
    r["mkdir_existing"] = attempt(os.mkdir, j("a"))
    os.mkdir(j("private"), 0o700)
    r["mode_0700"] = view(os.stat(j("private")))
    os.makedirs(j("a/b/c/d"))
    write(j("a/b/c/d/file"), b"x")
    r["nlink_with_subdir"] = os.stat(j("a")).st_nlink
    r["rmdir_nonempty"] = attempt(os.rmdir, j("a/b"))
    r["rmdir_file"] = attempt(os.rmdir, j("a/b/c/d/file"))
    r["unlink_dir"] = attempt(os.unlink, j("a/b"))
    r["unlink_missing"] = attempt(os.unlink, j("missing"))
    r["rmdir_missing"] = attempt(os.rmdir, j("missing"))
    r["rmdir_dot"] = attempt(os.rmdir, j("a/b/c/."))
    r["mkdir_under_file"] = attempt(os.mkdir, j("a/b/c/d/file/sub"))
    r["mkdir_missing_parent"] = attempt(os.mkdir, j("nope/sub"))
    r["name_255"] = attempt(os.mkdir, j("n" * 255))
    r["name_256"] = attempt(os.mkdir, j("n" * 256))
    os.mkdir(j("empty"))
    r["rmdir_empty"] = attempt(os.rmdir, j("empty"))
    r["listing"] = sorted(os.listdir(d))
    r["walk"] = [(os.path.relpath(p, d), sorted(dn), sorted(fn)) for p, dn, fn in os.walk(j("a"))]
    return r


@step
def bigdir(d):
    count = int(os.environ.get("WORKLOAD_BIGDIR_COUNT", "10000"))
    big = os.path.join(d, "big")
    os.mkdir(big)
    names = [f"entry-{i:05d}" + "x" * (i % 37) for i in range(count)]
    for i, name in enumerate(names):
        fd = os.open(os.path.join(big, name), os.O_CREAT | os.O_WRONLY, 0o644)
        if i % 1000 == 0:
            os.write(fd, name.encode())
        os.close(fd)
    listing = sorted(os.listdir(big))
    r = {"count": len(listing), "listing_sha": sha("\n".join(listing).encode()),
         "matches_created": listing == sorted(names)}
    with os.scandir(big) as it:
        entries = list(it)
    r["scandir_regular_files"] = sum(e.is_file(follow_symlinks=False) for e in entries)
    r["sizes_sum"] = sum(e.stat(follow_symlinks=False).st_size for e in entries)
    for name in names[::2]:
        os.unlink(os.path.join(big, name))
    remaining = sorted(os.listdir(big))
    r["after_half_removed"] = {"count": len(remaining),
                               "sha": sha("\n".join(remaining).encode())}
    r["rmdir_nonempty"] = attempt(os.rmdir, big)
    for name in remaining:
        os.unlink(os.path.join(big, name))
    r["rmdir_emptied"] = attempt(os.rmdir, big)
    return r


@step
def statvfs(d):
    st = os.statvfs(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    fst = os.fstatvfs(fd)
    os.close(fd)
    volatile["statvfs"] = {"bavail_bytes": st.f_bavail * st.f_frsize,
                           "bfree_bytes": st.f_bfree * st.f_frsize,
                           "blocks_bytes": st.f_blocks * st.f_frsize, "files_free": st.f_ffree}
    return {"bsize_positive": st.f_bsize > 0, "frsize_positive": st.f_frsize > 0,
            "blocks_positive": st.f_blocks > 0, "bfree_le_blocks": st.f_bfree <= st.f_blocks,
            "bavail_le_bfree": st.f_bavail <= st.f_bfree, "namemax": st.f_namemax,
            "fstatvfs_same_blocks": fst.f_blocks == st.f_blocks}


@step
def sync(d):
    p = os.path.join(d, "file")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, DATA)
    r = {"fsync": attempt(os.fsync, fd), "fdatasync": attempt(os.fdatasync, fd),
         "syncfs": libc_call("syncfs", fd)}
    os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    r["dir_fsync"] = attempt(os.fsync, dfd)
    r["dir_fdatasync"] = attempt(os.fdatasync, dfd)
    os.close(dfd)
    for flag in ("O_SYNC", "O_DSYNC"):
        fd = os.open(os.path.join(d, flag), os.O_CREAT | os.O_WRONLY | getattr(os, flag), 0o644)
        r[flag + "_write"] = os.write(fd, DATA)
        os.close(fd)
    os.sync()
    r["content"] = sha(read(p))
    return r


@step
def fallocation(d):
    p = os.path.join(d, "file")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    r = {"posix_fallocate": attempt(os.posix_fallocate, fd, 0, MiB)}
    st = os.fstat(fd)
    r["after_posix"] = {"size": st.st_size, "allocated": st.st_blocks * 512 >= MiB}
    r["keep_size"] = fallocate(fd, FALLOC_FL_KEEP_SIZE, MiB, 2 * MiB)
    st = os.fstat(fd)
    r["after_keep_size"] = {"size": st.st_size, "allocated": st.st_blocks * 512 >= 3 * MiB}
    r["extend"] = fallocate(fd, 0, 0, 4 * MiB)
    r["size_after_extend"] = os.fstat(fd).st_size
    os.pwrite(fd, b"z" * MiB, 0)
    r["punch_hole"] = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
    r["zero_range"] = fallocate(fd, FALLOC_FL_ZERO_RANGE, 65536, 4096)
    data = os.pread(fd, MiB, 0)
    r["after_punch_and_zero"] = {"size": os.fstat(fd).st_size, "sha": sha(data),
                                 "zeros": data.count(0)}
    os.close(fd)
    return r


@step
def seek(d):
    p = os.path.join(d, "file")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"d" * 4096, 0)
    os.pwrite(fd, b"e" * 4096, MiB)
    os.ftruncate(fd, 2 * MiB)
    os.fsync(fd)
    r = {}
    for whence_name, whence in (("DATA", os.SEEK_DATA), ("HOLE", os.SEEK_HOLE)):
        for offset in (0, 4096, 100_000, MiB, MiB + 4096, 2 * MiB - 1, 2 * MiB, 3 * MiB):
            try:
                r[f"{whence_name}@{offset}"] = os.lseek(fd, offset, whence)
            except OSError as exc:
                r[f"{whence_name}@{offset}"] = errname(exc)
    r["END"] = os.lseek(fd, 0, os.SEEK_END)
    r["CUR_after_END"] = os.lseek(fd, -10, os.SEEK_CUR)
    r["negative"] = attempt(os.lseek, fd, -1, os.SEEK_SET)
    os.close(fd)
    return r


@step
def readdir_types(d):
    def j(name):
        return os.path.join(d, name)

    write(j("regular"), b"x")
    os.mkdir(j("directory"))
    os.symlink("regular", j("symlink"))
    os.symlink("directory", j("dirsymlink"))
    os.mkfifo(j("fifo"))
    os.link(j("regular"), j("hardlink"))
    cwd = os.getcwd()
    os.chdir(d)  # a relative name stays within the 108-byte socket path limit
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("socket")
    os.chdir(cwd)
    r = {}
    with os.scandir(d) as it:
        for entry in sorted(it, key=lambda e: e.name):
            r[entry.name] = {"is_dir": entry.is_dir(follow_symlinks=False),
                             "is_file": entry.is_file(follow_symlinks=False),
                             "is_symlink": entry.is_symlink(),
                             "follows_to_dir": entry.is_dir(),
                             "lstat": kind(entry.stat(follow_symlinks=False).st_mode)}
    return r


@step
def special_files(d):
    def j(name):
        return os.path.join(d, name)

    r = {"mkfifo": attempt(os.mkfifo, j("fifo"), 0o640)}
    r["fifo"] = view(os.stat(j("fifo")))
    r["mkfifo_existing"] = attempt(os.mkfifo, j("fifo"))
    r["mknod_regular"] = attempt(os.mknod, j("regular"), stat.S_IFREG | 0o600)
    r["regular"] = view(os.stat(j("regular")))
    r["mknod_chardev"] = attempt(os.mknod, j("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r["chardev"] = stat_or_errno(j("null"))
    return r


@step
def large_file(d):
    p = os.path.join(d, "large")
    data = random.Random(1234).randbytes(8 * MiB)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    for off in range(0, len(data), MiB):
        os.write(fd, data[off:off + MiB])
    os.fsync(fd)
    os.close(fd)
    r = {"size": os.stat(p).st_size, "sha": sha(data), "read_sha": sha(read(p))}
    with open(p, "rb", buffering=0) as f:
        chunks = []
        while chunk := f.read(100_003):
            chunks.append(chunk)
        r["odd_chunks_sha"] = sha(b"".join(chunks))
        r["unaligned_pread"] = sha(os.pread(f.fileno(), 500_000, 1_000_001))
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, b"\xff" * 65536, 3 * MiB + 7)
    os.close(fd)
    r["after_overwrite"] = sha(read(p))
    return r


@step
def mmap_io(d):
    p = os.path.join(d, "mapped")
    write(p, bytes(65536))
    with open(p, "r+b") as f:
        with mmap.mmap(f.fileno(), 0) as m:
            for off in range(0, 65536, 4096):
                m[off:off + 8] = b"%08d" % off
            m.flush()
        r = {"after_shared_write": sha(read(p))}
        f.truncate(131072)
        with mmap.mmap(f.fileno(), 0) as m:
            m[-4:] = b"last"
            m.flush()
            r["mapped_read_matches"] = m[:] == read(p)
    r["after_growth"] = sha(read(p))
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        r["readonly_map"] = sha(m[:])
    return r


def compare_trees(left, right):
    """Recursive comparison by content (filecmp's default would trust size+mtime)."""
    problems = []
    pending = [""]
    while pending:
        rel = pending.pop()
        cmp = filecmp.dircmp(os.path.join(left, rel), os.path.join(right, rel),
                             ignore=list(COPY_IGNORE))
        problems += [f"only in source: {os.path.join(rel, n)}" for n in cmp.left_only]
        problems += [f"only in copy: {os.path.join(rel, n)}" for n in cmp.right_only]
        problems += [f"type differs: {os.path.join(rel, n)}" for n in cmp.common_funny]
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files,
                                               shallow=False)
        problems += [f"content differs: {os.path.join(rel, n)}" for n in mismatch + errors]
        pending += [os.path.join(rel, n) for n in sorted(cmp.common_dirs, reverse=True)]
    return sorted(problems)


@step
def copytree(d):
    sources = [s for s in os.environ.get("WORKLOAD_SRC_TREE", "").split(os.pathsep) if s]
    r = {}
    for src in sources:
        dst = os.path.join(d, os.path.basename(src.rstrip("/")))
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORE))
        manifest = tree_manifest(dst, times=True)
        r[os.path.basename(dst)] = {"mismatches": compare_trees(src, dst),
                                    "entries": len(manifest), "manifest": manifest}
    return r


# --- driver ----------------------------------------------------------------------------------


def run(root):
    os.umask(0o022)
    os.makedirs(root, exist_ok=True)
    if os.listdir(root):
        raise SystemExit(f"{root} is not empty")
    selected = os.environ.get("WORKLOAD_STEPS", "").split(",") if os.environ.get(
        "WORKLOAD_STEPS") else list(STEPS)
    skipped = set(filter(None, os.environ.get("WORKLOAD_SKIP", "").split(",")))
    selected = [name for name in selected if name not in skipped]
    results = {}
    for name in selected:
        d = os.path.join(root, name)
        os.mkdir(d)
        start = time.monotonic()
        try:
            results[name] = STEPS[name](d)
        except OSError as exc:
            results[name] = {"unexpected_error": errname(exc)}
            volatile["errors"][name] = traceback.format_exc()
        except Exception as exc:  # an assertion-like failure must not hide the other steps
            results[name] = {"unexpected_exception": type(exc).__name__}
            volatile["errors"][name] = traceback.format_exc()
        volatile["durations"][name] = round(time.monotonic() - start, 3)
    return {"steps": results, "tree": tree_manifest(root), "volatile": volatile}


def main(argv):
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    text = json.dumps(run(argv[1]), indent=1, sort_keys=True)
    if len(argv) == 3:
        with open(argv[2], "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv)
