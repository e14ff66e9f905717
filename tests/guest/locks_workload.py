"""Lock semantics workload: POSIX record locks, OFD locks, flock() and leases between processes.

Run as ``locks_workload.py DIRECTORY [HOLD_DIR]`` in a guest on the shared file system and on
the host in a plain directory; each check prints one line ``ok NAME: OBSERVED`` and the first
failure prints ``FAIL NAME: ...`` and exits 1, so the two transcripts can be compared line by
line.  Every blocking call runs under an alarm, so a lock that is never granted is a failure,
not a stuck run.

The scenarios follow what xfstests' ``locks`` group checks (the tests are not run here):
generic/131 (POSIX locks between two processes: conflicts, shared/exclusive, ranges and
splits, upgrade and downgrade, F_GETLK answers, blocking waits, release on close of any of the
process's descriptors and on exit), generic/478 (OFD locks against OFD and POSIX locks, F_GETLK
from another process after a fork whose child closes its descriptor, after dup+close and after
close), generic/571 (leases: set, get, conflicts, break on a conflicting open), plus flock()
(exclusive/shared per open file description, kept by a dup or fork until the last descriptor
closes) and repeated rounds of blocking OFD and flock locks released by close.

With HOLD_DIR, the workload ends by holding a POSIX write lock on ``held-posix``, a flock()
lock on ``held-flock`` and an OFD write lock on ``held-ofd``, creates ``HOLD_DIR/holding`` and
keeps them until ``DIRECTORY/released`` appears (a host process checks them meanwhile).
"""

import errno
import fcntl
import multiprocessing
import os
import signal
import struct
import sys
import threading
import time

TIMEOUT = 60  # seconds any blocking call may take before the check fails
BLOCKED = 0.5  # how long a waiter must stay blocked to count as blocked
FLOCK = struct.Struct("hh4xqqi4x")  # struct flock on x86-64
TYPE_NAMES = {fcntl.F_RDLCK: "rdlck", fcntl.F_WRLCK: "wrlck", fcntl.F_UNLCK: "unlck"}
EOF = 0  # l_len 0: to the end of the file and beyond
CMDS = {("posix", "set"): fcntl.F_SETLK, ("posix", "wait"): fcntl.F_SETLKW,
        ("posix", "get"): fcntl.F_GETLK, ("ofd", "set"): fcntl.F_OFD_SETLK,
        ("ofd", "wait"): fcntl.F_OFD_SETLKW, ("ofd", "get"): fcntl.F_OFD_GETLK}
RD, WR, UN = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK

DIR = None


class Failure(Exception):
    pass


def _alarm(signum, frame):
    raise TimeoutError("blocked past the timeout")


signal.signal(signal.SIGALRM, _alarm)


def guarded(call, *args):
    """``call(*args)`` with the alarm set: a hang raises TimeoutError.  Only the main thread
    takes the alarm; a waiting thread is bounded by its joiner instead."""
    if threading.current_thread() is not threading.main_thread():
        return call(*args)
    signal.alarm(TIMEOUT)
    try:
        return call(*args)
    finally:
        signal.alarm(0)


def outcome(call, *args):
    """'ok' or the errno's name (EAGAIN and EACCES are one answer: fcntl(2) allows either)."""
    try:
        guarded(call, *args)
        return "ok"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return "EAGAIN" if name in ("EACCES", "EWOULDBLOCK") else name


def path(name):
    return os.path.join(DIR, name)


def fresh(name, size=4096):
    p = path(name)
    with open(p, "wb") as f:
        f.write(b"\xff" * size)
    return p


def opened(name, mode="rw"):
    return os.open(path(name), {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[mode])


def lock(fd, kind, op, ltype, start=0, length=EOF):
    """fcntl record lock; ``kind`` posix|ofd, ``op`` set|wait|get.  For get, the answer."""
    arg = FLOCK.pack(ltype, os.SEEK_SET, start, length, 0)
    return FLOCK.unpack(guarded(fcntl.fcntl, fd, CMDS[kind, op], arg))


def try_lock(fd, kind, ltype, start=0, length=EOF, op="set"):
    return outcome(lock, fd, kind, op, ltype, start, length)


def getlk(fd, kind, ltype, start=0, length=EOF, holder=None):
    """F_GETLK / F_OFD_GETLK as 'unlck' or 'TYPE START LEN PID' with the pid as 'holder' (the
    given pid), '-1' (OFD locks) or 'other'."""
    ltype, _, start, length, pid = lock(fd, kind, "get", ltype, start, length)
    if ltype == UN:
        return "unlck"
    who = "holder" if pid == holder else "-1" if pid == -1 else f"other({pid})"
    return f"{TYPE_NAMES[ltype]} {start} {length} {who}"


def flock(fd, how):
    return outcome(fcntl.flock, fd, how)


# -- a second (or third) process, driven through a pipe ------------------------------------------

class Peer:
    """Another process that runs workload functions on request (POSIX locks are per process).
    ``call`` waits for the answer; ``start`` sends a request whose answer ``result`` collects,
    so that the caller can check the peer stays blocked meanwhile."""

    def __init__(self):
        self.conn, child = multiprocessing.Pipe()
        self.pid = os.fork()
        if self.pid == 0:
            # Only the pipe: an inherited descriptor would keep its description (and so its
            # OFD and flock locks) alive.
            keep = child.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            self._serve(child)
        child.close()

    @staticmethod
    def _serve(conn):
        fds = {}
        code = 0
        try:
            while True:
                request = conn.recv()
                if request is None:
                    break
                name, args = request
                try:
                    if name == "open":
                        fds[args[0]] = opened(*args[1:])
                        answer = "ok"
                    elif name == "close":
                        os.close(fds.pop(args[0]))
                        answer = "ok"
                    else:
                        fn = globals()[name]
                        answer = fn(fds[args[0]], *args[1:])
                except Exception as exc:  # reported to the caller, which fails the check
                    answer = f"error {type(exc).__name__}: {exc}"
                conn.send(answer)
        except (EOFError, OSError):
            code = 1
        os._exit(code)

    def start(self, name, *args):
        self.conn.send((name, args))

    def result(self, timeout=TIMEOUT):
        if not self.conn.poll(timeout):
            raise Failure(f"peer gave no answer in {timeout}s")
        return self.conn.recv()

    def blocked(self):
        """True if the last request is still unanswered after BLOCKED seconds."""
        return not self.conn.poll(BLOCKED)

    def call(self, name, *args):
        self.start(name, *args)
        return self.result()

    def exit(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        _, status = os.waitpid(self.pid, 0)
        return status


def state(results):
    """What a thread started by in_thread has answered so far."""
    return results[0] if results else "blocked"


def in_thread(call, *args):
    """Start ``call(*args)`` in a daemon thread; returns (thread, results list)."""
    results = []
    waiter = threading.Thread(target=lambda: results.append(call(*args)), daemon=True)
    waiter.start()
    return waiter, results


def check(name, observed, expected):
    if observed != expected:
        print(f"FAIL {name}: expected {expected!r}, got {observed!r}", flush=True)
        raise Failure(name)
    print(f"ok {name}: {observed}", flush=True)


def check_blocked_then_granted(name, peer, release):
    """The peer's pending request stays blocked until ``release()``, then succeeds."""
    check(f"{name} waits", "blocked" if peer.blocked() else f"answered {peer.result()}",
          "blocked")
    release()
    check(f"{name} granted", peer.result(), "ok")


# -- POSIX record locks between two processes (generic/131) --------------------------------------

def posix_locks():
    me = os.getpid()
    fresh("posix")
    fd = opened("posix")
    b = Peer()
    check("posix peer opens", b.call("open", "f", "posix"), "ok")
    lock(fd, "posix", "set", WR, 0, 10)
    check("posix wrlck blocks peer wrlck", b.call("try_lock", "f", "posix", WR, 0, 10),
          "EAGAIN")
    check("posix wrlck blocks overlapping rdlck", b.call("try_lock", "f", "posix", RD, 5, 10),
          "EAGAIN")
    check("posix adjacent range free", b.call("try_lock", "f", "posix", WR, 10, 10), "ok")
    b.call("lock", "f", "posix", "set", UN, 0, EOF)
    check("posix getlk names the holder", b.call("getlk", "f", "posix", WR, 0, 100, me),
          "wrlck 0 10 holder")
    check("posix own locks never conflict", try_lock(fd, "posix", WR, 0, 20), "ok")
    check("posix getlk after merge", b.call("getlk", "f", "posix", RD, 15, 1, me),
          "wrlck 0 20 holder")
    lock(fd, "posix", "set", UN, 0, EOF)
    b.call("lock", "f", "posix", "set", UN, 0, EOF)

    # Shared locks, upgrade and downgrade.
    lock(fd, "posix", "set", RD, 100, 10)
    check("posix rdlck shared", b.call("try_lock", "f", "posix", RD, 100, 10), "ok")
    check("posix rdlck blocks wrlck", b.call("try_lock", "f", "posix", WR, 105, 1), "EAGAIN")
    check("posix upgrade refused while shared", try_lock(fd, "posix", WR, 100, 10), "EAGAIN")
    b.call("lock", "f", "posix", "set", UN, 100, 10)
    check("posix upgrade once alone", try_lock(fd, "posix", WR, 100, 10), "ok")
    check("posix upgraded lock seen", b.call("getlk", "f", "posix", RD, 100, 10, me),
          "wrlck 100 10 holder")
    check("posix downgrade", try_lock(fd, "posix", RD, 100, 10), "ok")
    check("posix downgraded lock shared", b.call("try_lock", "f", "posix", RD, 100, 10), "ok")
    check("posix downgraded lock seen", b.call("getlk", "f", "posix", WR, 0, EOF, me),
          "rdlck 100 10 holder")
    lock(fd, "posix", "set", UN, 0, EOF)
    b.call("lock", "f", "posix", "set", UN, 0, EOF)

    # Unlocking the middle of a lock splits it.
    lock(fd, "posix", "set", WR, 0, 100)
    lock(fd, "posix", "set", UN, 40, 20)
    check("posix split frees the middle", b.call("try_lock", "f", "posix", WR, 40, 20), "ok")
    check("posix split keeps the head", b.call("try_lock", "f", "posix", WR, 39, 1), "EAGAIN")
    check("posix split keeps the tail", b.call("getlk", "f", "posix", WR, 60, EOF, me),
          "wrlck 60 40 holder")
    lock(fd, "posix", "set", UN, 0, EOF)
    b.call("lock", "f", "posix", "set", UN, 0, EOF)

    # A lock to EOF covers offsets far beyond the file's end.
    lock(fd, "posix", "set", WR, 1000, EOF)
    check("posix lock to EOF covers far offsets",
          b.call("try_lock", "f", "posix", RD, 1 << 40, 1), "EAGAIN")
    check("posix lock to EOF getlk", b.call("getlk", "f", "posix", WR, 0, EOF, me),
          "wrlck 1000 0 holder")
    lock(fd, "posix", "set", UN, 0, EOF)

    # Blocking waits, several rounds with the roles swapped.
    for round_ in range(3):
        holder_is_me = round_ % 2 == 0
        if holder_is_me:
            lock(fd, "posix", "set", WR, 0, 10)
            b.start("try_lock", "f", "posix", WR, 0, 10, "wait")
            check_blocked_then_granted(f"posix setlkw round {round_}", b,
                                       lambda: lock(fd, "posix", "set", UN, 0, 10))
            b.call("lock", "f", "posix", "set", UN, 0, EOF)
        else:
            b.call("lock", "f", "posix", "set", WR, 0, 10)
            waiter, results = in_thread(try_lock, fd, "posix", WR, 0, 10, "wait")
            waiter.join(BLOCKED)
            check(f"posix setlkw round {round_} waits", state(results), "blocked")
            b.call("lock", "f", "posix", "set", UN, 0, 10)
            waiter.join(TIMEOUT)
            check(f"posix setlkw round {round_} granted", state(results), "ok")
            lock(fd, "posix", "set", UN, 0, EOF)

    # Access modes: a read lock needs read access, a write lock write access.
    rd, wr = opened("posix", "r"), opened("posix", "w")
    check("posix wrlck on read-only fd", try_lock(rd, "posix", WR, 0, 1), "EBADF")
    check("posix rdlck on write-only fd", try_lock(wr, "posix", RD, 0, 1), "EBADF")
    check("posix rdlck on read-only fd", try_lock(rd, "posix", RD, 0, 1), "ok")
    check("posix wrlck on write-only fd", try_lock(wr, "posix", WR, 2, 1), "ok")

    # Closing ANY descriptor of the file releases all the process's locks on it.
    os.close(wr)
    check("posix close of another fd releases", b.call("try_lock", "f", "posix", WR, 0, 10),
          "ok")
    b.call("lock", "f", "posix", "set", UN, 0, EOF)
    os.close(rd)
    lock(fd, "posix", "set", WR, 0, 10)
    other = opened("posix", "r")
    os.close(other)
    check("posix close of a later fd releases", b.call("try_lock", "f", "posix", WR, 0, 10),
          "ok")
    b.call("lock", "f", "posix", "set", UN, 0, EOF)

    # A process's exit releases its locks.
    c = Peer()
    c.call("open", "f", "posix")
    c.call("lock", "f", "posix", "set", WR, 0, EOF)
    check("posix peer's lock held", try_lock(fd, "posix", WR, 0, 1), "EAGAIN")
    check("posix second peer exits", c.exit(), 0)
    check("posix exit releases", try_lock(fd, "posix", WR, 0, 1), "ok")
    os.close(fd)
    check("posix peer exits", b.exit(), 0)


# -- OFD locks (generic/478) --------------------------------------------------------------------

def ofd_locks():
    fresh("ofd")
    fd1, fd2 = opened("ofd"), opened("ofd")
    lock(fd1, "ofd", "set", WR, 0, 10)
    check("ofd conflicts between descriptions of one process", try_lock(fd2, "ofd", WR, 0, 10),
          "EAGAIN")
    check("ofd getlk from another description", getlk(fd2, "ofd", RD, 0, EOF),
          "wrlck 0 10 -1")
    check("ofd conflicts with the process's posix lock", try_lock(fd2, "posix", WR, 5, 20),
          "EAGAIN")
    check("ofd same description never conflicts", try_lock(fd1, "ofd", RD, 0, 10), "ok")
    check("ofd converted by its description", getlk(fd2, "ofd", WR, 0, EOF), "rdlck 0 10 -1")
    check("ofd rdlck shared", try_lock(fd2, "ofd", RD, 5, 10), "ok")
    lock(fd1, "ofd", "set", UN, 0, EOF)
    lock(fd2, "ofd", "set", UN, 0, EOF)
    check("ofd explicit unlock", try_lock(fd2, "ofd", WR, 0, EOF), "ok")
    os.close(fd1)
    os.close(fd2)

    # generic/478's matrix: lock L0 on [0,9], then one of
    #   fork: a child (own descriptor table, shared description) closes its fd and exits;
    #   dup:  dup the fd and close the duplicate;
    #   close: close the fd;
    # then another process asks F_GETLK / F_OFD_GETLK on a range.  An OFD lock belongs to the
    # description: it survives fork-close and dup-close.  A POSIX lock belongs to the process:
    # the child never had it, dup+close drops it.  Read locks on read-only opens.
    getter = Peer()
    for l0_kind in ("ofd", "posix"):
        for l0_type in (WR, RD):
            for action in ("fork", "dup", "close"):
                for g_kind in ("ofd", "posix"):
                    for g_type, g_start, g_len in ((WR, 0, 10), (WR, 5, 20), (WR, 20, 10),
                                                   (RD, 0, 10), (RD, 20, 10)):
                        mode = "r" if l0_type == RD else "rw"
                        fresh("ofd")
                        fd = opened("ofd", mode)
                        lock(fd, l0_kind, "set", l0_type, 0, 10)
                        if action == "fork":
                            child = os.fork()
                            if child == 0:
                                os.close(fd)
                                os._exit(0)
                            os.waitpid(child, 0)
                        elif action == "dup":
                            os.close(os.dup(fd))
                        else:
                            os.close(fd)
                        held = action == "fork" or (action == "dup" and l0_kind == "ofd")
                        overlaps = g_start < 10
                        conflict = held and overlaps and WR in (l0_type, g_type)
                        expected = TYPE_NAMES[l0_type] if conflict else "unlck"
                        getter.call("open", "g", "ofd", "r" if g_type == RD else "rw")
                        answer = getter.call("getlk", "g", g_kind, g_type, g_start, g_len)
                        getter.call("close", "g")
                        name = (f"ofd-matrix {l0_kind} {TYPE_NAMES[l0_type]} [0,9] {action}, "
                                f"{g_kind} getlk {TYPE_NAMES[g_type]} [{g_start},"
                                f"{g_start + g_len - 1}]")
                        check(name, answer.split()[0], expected)
                        if action != "close":
                            os.close(fd)
    check("ofd getter exits", getter.exit(), 0)

    # Blocking OFD locks released by close, round after round, between descriptions in one
    # process (a thread waits) and between processes.
    fresh("ofd")
    for round_ in range(4):
        holder = opened("ofd")
        lock(holder, "ofd", "set", WR, 0, EOF)
        waiter_fd = opened("ofd")
        waiter, results = in_thread(try_lock, waiter_fd, "ofd", WR, 0, EOF, "wait")
        waiter.join(BLOCKED)
        check(f"ofd setlkw thread round {round_} waits", state(results), "blocked")
        os.close(holder)
        waiter.join(TIMEOUT)
        check(f"ofd setlkw thread round {round_} granted by close", state(results), "ok")
        os.close(waiter_fd)
    b = Peer()
    for round_ in range(4):
        b.call("open", "f", "ofd")
        if round_ % 2 == 0:
            holder = opened("ofd")
            lock(holder, "ofd", "set", WR, 0, EOF)
            b.start("try_lock", "f", "ofd", WR, 0, EOF, "wait")
            check_blocked_then_granted(f"ofd setlkw peer round {round_} (close releases)", b,
                                       lambda: os.close(holder))
        else:
            b.call("lock", "f", "ofd", "set", WR, 0, EOF)
            waiter_fd = opened("ofd")
            waiter, results = in_thread(try_lock, waiter_fd, "ofd", WR, 0, EOF, "wait")
            waiter.join(BLOCKED)
            check(f"ofd setlkw peer round {round_} waits", state(results), "blocked")
            b.call("close", "f")
            waiter.join(TIMEOUT)
            check(f"ofd setlkw peer round {round_} granted by close", state(results), "ok")
            os.close(waiter_fd)
            continue
        b.call("close", "f")
    check("ofd peer exits", b.exit(), 0)


# -- flock() ---------------------------------------------------------------------------------------

def flock_locks():
    fresh("flock")
    fd1, fd2 = opened("flock", "r"), opened("flock", "r")
    check("flock ex on a read-only fd", flock(fd1, fcntl.LOCK_EX), "ok")
    check("flock ex excludes another description", flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB),
          "EAGAIN")
    check("flock ex excludes sh", flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB), "EAGAIN")
    check("flock relock by the same description", flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB),
          "ok")
    check("flock downgrade", flock(fd1, fcntl.LOCK_SH | fcntl.LOCK_NB), "ok")
    check("flock sh shared", flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB), "ok")
    check("flock upgrade refused while shared", flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB),
          "EAGAIN")
    check("flock unlock", flock(fd2, fcntl.LOCK_UN), "ok")
    check("flock upgrade once alone", flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB), "ok")

    # flock and POSIX locks do not interact (Linux).
    b = Peer()
    b.call("open", "f", "flock")
    check("flock independent of posix locks", b.call("try_lock", "f", "posix", WR, 0, EOF), "ok")
    b.call("lock", "f", "posix", "set", UN, 0, EOF)
    check("flock independent of ofd locks", b.call("try_lock", "f", "ofd", WR, 0, EOF), "ok")
    b.call("lock", "f", "ofd", "set", UN, 0, EOF)

    # Held by the description until its last descriptor closes.
    dup = os.dup(fd1)
    os.close(fd1)
    check("flock kept by a dup", flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB), "EAGAIN")
    child = os.fork()
    if child == 0:
        os.close(dup)
        os._exit(0)
    os.waitpid(child, 0)
    check("flock kept after a forked child closes", flock(fd2, fcntl.LOCK_SH | fcntl.LOCK_NB),
          "EAGAIN")
    check("flock seen by another process", b.call("flock", "f", fcntl.LOCK_EX | fcntl.LOCK_NB),
          "EAGAIN")
    os.close(dup)
    check("flock released by the last close", flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB), "ok")
    check("flock unlock", flock(fd2, fcntl.LOCK_UN), "ok")

    # Blocking flock released by close, round after round, the roles swapped.
    for round_ in range(4):
        if round_ % 2 == 0:
            holder = opened("flock", "r")
            flock(holder, fcntl.LOCK_EX)
            b.start("flock", "f", fcntl.LOCK_EX)
            check_blocked_then_granted(f"flock wait round {round_} (close releases)", b,
                                       lambda: os.close(holder))
            b.call("flock", "f", fcntl.LOCK_UN)
        else:
            b.call("flock", "f", fcntl.LOCK_EX)
            waiter, results = in_thread(flock, fd2, fcntl.LOCK_SH)
            waiter.join(BLOCKED)
            check(f"flock wait round {round_} waits", state(results), "blocked")
            b.call("close", "f")
            waiter.join(TIMEOUT)
            check(f"flock wait round {round_} granted by close", state(results), "ok")
            flock(fd2, fcntl.LOCK_UN)
            b.call("open", "f", "flock")
    os.close(fd2)
    check("flock peer exits", b.exit(), 0)


# -- leases (generic/571) --------------------------------------------------------------------------

def leases():
    fresh("lease")
    rd = opened("lease", "r")
    check("lease rdlck on a read-only fd", outcome(fcntl.fcntl, rd, fcntl.F_SETLEASE, RD), "ok")
    check("lease get", TYPE_NAMES[fcntl.fcntl(rd, fcntl.F_GETLEASE)], "rdlck")
    check("lease unlock", outcome(fcntl.fcntl, rd, fcntl.F_SETLEASE, UN), "ok")
    check("lease get after unlock", TYPE_NAMES[fcntl.fcntl(rd, fcntl.F_GETLEASE)], "unlck")
    rw = opened("lease", "rw")
    check("lease rdlck refused while open for writing",
          outcome(fcntl.fcntl, rd, fcntl.F_SETLEASE, RD), "EAGAIN")
    check("lease wrlck refused while open elsewhere",
          outcome(fcntl.fcntl, rw, fcntl.F_SETLEASE, WR), "EAGAIN")
    os.close(rd)
    check("lease wrlck when the only opener", outcome(fcntl.fcntl, rw, fcntl.F_SETLEASE, WR),
          "ok")
    check("lease wrlck get", TYPE_NAMES[fcntl.fcntl(rw, fcntl.F_GETLEASE)], "wrlck")
    fcntl.fcntl(rw, fcntl.F_SETLEASE, UN)
    os.close(rw)

    # A conflicting open breaks the lease: the holder gets SIGIO, the opener waits until the
    # holder gives the lease up.
    rd = opened("lease", "r")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
    try:
        fcntl.fcntl(rd, fcntl.F_SETLEASE, RD)
        b = Peer()
        b.start("open", "f", "lease", "w")
        got = signal.sigtimedwait({signal.SIGIO}, TIMEOUT)
        check("lease break signals the holder", got and got.si_signo, signal.SIGIO)
        check("lease break: opener waits", "blocked" if b.blocked() else "answered", "blocked")
        fcntl.fcntl(rd, fcntl.F_SETLEASE, UN)
        check("lease break: opener proceeds once released", b.result(), "ok")
        check("lease peer exits", b.exit(), 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(rd)


def hold(hold_dir):
    """Hold one lock of each kind until DIRECTORY/released exists (the host checks them)."""
    fds = [opened(name) for name in ("held-posix", "held-flock", "held-ofd")]
    lock(fds[0], "posix", "set", WR, 0, EOF)
    fcntl.flock(fds[1], fcntl.LOCK_EX)
    lock(fds[2], "ofd", "set", WR, 0, EOF)
    open(os.path.join(hold_dir, "holding"), "w").close()
    deadline = time.monotonic() + TIMEOUT * 4
    while not os.path.exists(path("released")):
        if time.monotonic() > deadline:
            raise Failure("the host never finished checking the held locks")
        time.sleep(0.05)
    for fd in fds:
        os.close(fd)
    print("ok held locks checked by the host", flush=True)


SUITES = {"posix": posix_locks, "ofd": ofd_locks, "flock": flock_locks, "lease": leases}


def main(argv):
    global DIR
    DIR = argv[1]
    os.makedirs(DIR, exist_ok=True)
    wanted = os.environ.get("LOCKS_SUITES", ",".join(SUITES)).split(",")
    try:
        for name in wanted:
            SUITES[name]()
        if len(argv) > 2:
            for name in ("held-posix", "held-flock", "held-ofd"):
                fresh(name)
            hold(argv[2])
    except Failure:
        return 1
    except Exception as exc:
        print(f"FAIL unexpected {type(exc).__name__}: {exc}", flush=True)
        raise
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
