"""Differential tests: every case runs on fastvfs and on the reference C virtiofsd
(``/usr/lib/qemu/virtiofsd``), each on a fresh tree, and the outcomes are compared.

The rule: fastvfs is never less strict than the reference.  A case FAILS where fastvfs grants
what the reference refuses (opening, reading or writing a FIFO, socket or device node above all),
blocks or dies where the reference answers, or serves less after a malformed message than the
reference does.  Where fastvfs is stricter, or both refuse with different errnos, the difference
is allowed: :data:`ALLOWED` documents the expected ones, each with its reason, and the module
prints a summary of every difference seen (documented or not) after its last test.

Configuration: fastvfs runs with its defaults (namespace sandbox, seccomp kill) plus
``--cache never --xattr``; the reference with ``-o cache=none -o xattr -o posix_lock`` and its
default sandbox (chroot where this machine cannot unshare, see ``conftest.reference_sandbox``).
Extended attributes and POSIX locks are on in both so that GETXATTR/SETXATTR and GETLK/SETLK
reach the file system instead of stopping at "not configured".

One daemon per backend serves a whole group of cases (a file type, or one list of malformed
inputs); each file-type case gets a directory of its own.  A case that leaves a daemon blocked or
dead gets it replaced before the next case.
"""

import contextlib
import dataclasses
import errno
import fcntl
import fnmatch
import os
import stat
import subprocess

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.frontend import VhostUserError
from fastvfs_testing.fuse_client import FuseProtocolError

from .conftest import BACKENDS, BackendLauncher, reference_argv
from .test_hostile import (BAD_CHAIN_SHAPES, BAD_CHAIN_SHAPES_WITH_REPLY, BAD_FUSE_REQUESTS,
                           BAD_MESSAGES, chain_returned, publish_bad_chain, send_bad_fuse_request,
                           send_bad_message, still_serving)

ROOT = abi.FUSE_ROOT_ID
# Every request must be answered within this many seconds; a daemon that takes longer blocks.
TIMEOUT = 5.0
# How long a daemon that stopped serving gets to exit, to tell ending a session from crashing.
EXIT_WAIT = 2.0
CONTENTS = b"regular file contents"
XATTR = b"user.fastvfs.differential"

pytestmark = [pytest.mark.reference, pytest.mark.skipif(
    bool(BACKENDS["reference"].unavailable), reason=str(BACKENDS["reference"].unavailable))]

SPECS = {
    "fastvfs": dataclasses.replace(
        BACKENDS["fastvfs"], argv=lambda sock, shared: [*BACKENDS["fastvfs"].argv(sock, shared),
                                                        "--xattr"]),
    "reference": dataclasses.replace(
        BACKENDS["reference"], argv=lambda sock, shared: [*reference_argv(sock, shared),
                                                          "-o", "xattr", "-o", "posix_lock"]),
}


class Blocked(Exception):
    """The daemon did not answer within TIMEOUT."""


class Died(Exception):
    """The daemon closed the connection or broke the protocol."""


def _errname(code):
    return errno.errorcode.get(code, str(code))


class Daemon:
    """One backend daemon serving a group of cases, replaced when a case blocks or kills it."""

    def __init__(self, name, tmp_path):
        self.name = name
        run = tmp_path / name
        run.mkdir()
        self.launcher = BackendLauncher(name, SPECS[name], run)
        self.starts = 0
        self._start()

    def _start(self):
        self.frontend, self.client, self.shared = self.launcher(timeout=TIMEOUT)
        self.client.timeout = TIMEOUT
        self.process = self.launcher.process
        self.starts += 1

    def call(self, fn, *args, **kwargs):
        """``fn(self.client, ...)``; a timeout raises Blocked, a lost connection Died."""
        try:
            return fn(self.client, *args, **kwargs)
        except TimeoutError as exc:
            raise Blocked() from exc
        except (ConnectionError, FuseProtocolError, BrokenPipeError) as exc:
            raise Died(str(exc)) from exc

    def serving(self):
        """The process runs and answers a vhost-user request and GETATTR of the root."""
        if self.process.poll() is not None:
            return False
        try:
            self.call(lambda c: still_serving(c.frontend, c))
        except (Blocked, Died, OSError, AssertionError, KeyError, VhostUserError):
            return False
        return True

    def replace(self, fifos=()):
        """Release whatever the daemon blocks on (a FIFO open or read waits for a peer: open
        each FIFO read-write here and put a byte in), let it answer, then start a fresh one."""
        peers = []
        for path in fifos:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
                peers.append(fd)
                os.write(fd, b"u")
        with contextlib.suppress(Exception):
            self.client.wait_all(TIMEOUT)
        for fd in peers:
            os.close(fd)
        self.frontend.close()
        self._start()


# -- file types ------------------------------------------------------------------------------

KINDS = {
    "regular": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
# /dev/zero's numbers: a daemon that opens it hands the guest host device access.  The block
# device is loop0's: nothing ever writes to it (see Case.with_handle).
RDEV = {"chardev": os.makedev(1, 5), "blockdev": os.makedev(7, 0)}
ORIGINS = ("guest", "host")


def _type_name(mode):
    return next((name for name, fmt in KINDS.items() if stat.S_IFMT(mode) == fmt), "?")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one request got: ``answer`` is "ok", an errno name, "blocked" or "died"; after an
    OPEN or CREATE that gave a handle, what a READ and a WRITE through it got ("<n>B" or an
    errno name) and the type of the object the name is on the host afterwards."""

    answer: str
    read: str = None
    write: str = None
    opened: str = None

    def __str__(self):
        extra = [f"{k}={v}" for k, v in (("read", self.read), ("write", self.write),
                                         ("opened", self.opened)) if v is not None]
        return " ".join([self.answer, *extra])


class Case:
    """One (file type, origin) object in a fresh directory ``c<n>`` of a daemon's share, next
    to a regular ``target`` (the symlink's target) and a regular ``src`` (to rename onto it)."""

    def __init__(self, daemon, kind, origin, number):
        self.daemon, self.kind = daemon, kind
        self.host_dir = daemon.shared / f"c{number}"
        self.host_dir.mkdir()
        (self.host_dir / "target").write_bytes(CONTENTS)
        (self.host_dir / "src").write_bytes(CONTENTS)
        if origin == "host":
            self._plant(self.host_dir / "obj")
        self.dir = daemon.call(lambda c: c.lookup(ROOT, f"c{number}")).nodeid
        # A guest has looked up what it renames (the reference answers EIO for a name it has not).
        daemon.call(lambda c: c.lookup(self.dir, "src"))
        if origin == "guest":
            self.obj = daemon.call(self._make)
        else:
            self.obj = daemon.call(lambda c: c.lookup(self.dir, "obj")).nodeid

    def _plant(self, path):
        kind = self.kind
        if kind == "regular":
            path.write_bytes(CONTENTS)
        elif kind == "directory":
            path.mkdir()
        elif kind == "symlink":
            path.symlink_to("target")
        else:
            os.mknod(path, KINDS[kind] | 0o666, RDEV.get(kind, 0))

    def _make(self, client):
        kind = self.kind
        if kind == "regular":
            entry, handle = client.create(self.dir, "obj", os.O_RDWR | os.O_EXCL)
            client.write(entry.nodeid, handle.fh, 0, CONTENTS)
            client.release(entry.nodeid, handle.fh)
            return entry.nodeid
        if kind == "directory":
            return client.mkdir(self.dir, "obj").nodeid
        if kind == "symlink":
            return client.symlink(self.dir, "obj", "target").nodeid
        return client.mknod(self.dir, "obj", KINDS[kind] | 0o666, RDEV.get(kind, 0)).nodeid

    def fifos(self):
        return [p for p in self.host_dir.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]

    def attempt(self, fn, *args):
        """Outcome of ``fn(client, *args)`` that answers nothing beyond success or an errno."""
        try:
            self.daemon.call(fn, *args)
        except OSError as exc:
            return Outcome(_errname(exc.errno))
        return Outcome("ok")

    def with_handle(self, fn):
        """Outcome of an OPEN or CREATE ``fn(client) -> (nodeid, fh)``; with a handle, READ and
        WRITE through it, then RELEASE it."""
        try:
            nodeid, fh = self.daemon.call(fn)
        except OSError as exc:
            return Outcome(_errname(exc.errno))
        opened = _type_name(os.lstat(self.host_dir / "obj").st_mode)
        steps = {"read": lambda c: f"{len(c.read(nodeid, fh, 0, 64))}B"}
        # Never write to a block device of this host, whatever the daemon opened.
        if opened != "blockdev":
            steps["write"] = lambda c: f"{c.write(nodeid, fh, 0, b'w')}B"
        results = {}
        for step, run in steps.items():
            try:
                results[step] = self.daemon.call(run)
            except OSError as exc:
                results[step] = _errname(exc.errno)
            except Blocked:
                results[step] = "blocked"
                raise Blocked(Outcome("ok", opened=opened, **results))
        with contextlib.suppress(OSError):
            self.daemon.call(lambda c: c.release(nodeid, fh))
        return Outcome("ok", opened=opened, **results)


def _open(flags):
    def run(case):
        return case.with_handle(lambda c: (case.obj, c.open(case.obj, flags).fh))
    return run


def _create(flags):
    def run(case):
        def create(client):
            entry, handle = client.create(case.dir, "obj", flags)
            return entry.nodeid, handle.fh
        return case.with_handle(create)
    return run


def _setattr(**fields):
    return lambda case: case.attempt(lambda c: c.setattr(case.obj, **fields))


def _opendir(case):
    def run(client):
        client.releasedir(case.obj, client.opendir(case.obj).fh)
    return case.attempt(run)


def _getxattr(case):
    return case.attempt(lambda c: c.call(Opcode.GETXATTR, case.obj,
                                         abi.getxattr_in.pack(0, 0) + XATTR + b"\0",
                                         reply_len=abi.getxattr_out.size))


def _setxattr(case):
    def run(client):
        value = b"v"
        # The body's layout depends on whether INIT agreed on FUSE_SETXATTR_EXT.
        if client.init_out.all_flags & abi.FUSE_SETXATTR_EXT:
            head = abi.setxattr_in_ext.pack(len(value), 0, 0, 0)
        else:
            head = abi.setxattr_in.pack(len(value), 0)
        client.call(Opcode.SETXATTR, case.obj, head + XATTR + b"\0" + value)
    return case.attempt(run)


def _lock(opcode):
    body = abi.lk_in.pack(0, 1, 0, abi.OFFSET_MAX, fcntl.F_WRLCK, 0, 0, 0)
    reply_len = abi.lk_out.size if opcode == Opcode.GETLK else 0
    return lambda case: case.attempt(lambda c: c.call(opcode, case.obj, body,
                                                      reply_len=reply_len))


O_RDONLY, O_WRONLY, O_RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
REQUESTS = {
    "OPEN O_RDONLY": _open(O_RDONLY),
    "OPEN O_WRONLY": _open(O_WRONLY),
    "OPEN O_RDWR": _open(O_RDWR),
    "OPEN O_RDONLY|O_NONBLOCK": _open(O_RDONLY | os.O_NONBLOCK),
    "OPEN O_WRONLY|O_NONBLOCK": _open(O_WRONLY | os.O_NONBLOCK),
    "OPEN O_RDWR|O_NONBLOCK": _open(O_RDWR | os.O_NONBLOCK),
    "OPEN O_WRONLY|O_TRUNC": _open(O_WRONLY | os.O_TRUNC),
    "OPEN O_RDWR|O_TRUNC": _open(O_RDWR | os.O_TRUNC),
    "CREATE O_RDONLY": _create(O_RDONLY),
    "CREATE O_WRONLY": _create(O_WRONLY),
    "CREATE O_RDWR": _create(O_RDWR),
    "CREATE O_RDWR|O_EXCL": _create(O_RDWR | os.O_EXCL),
    "SETATTR size=0": _setattr(size=0),
    "SETATTR mode": _setattr(mode=0o600),
    "SETATTR uid/gid": _setattr(uid=1000, gid=1000),
    "RENAME onto it": lambda case: case.attempt(
        lambda c: c.rename(case.dir, "src", case.dir, "obj")),
    "LINK to it": lambda case: case.attempt(lambda c: c.link(case.obj, case.dir, "link")),
    "OPENDIR": _opendir,
    "READLINK": lambda case: case.attempt(lambda c: c.readlink(case.obj)),
    "GETXATTR": _getxattr,
    "SETXATTR": _setxattr,
    "GETLK": _lock(Opcode.GETLK),
    "SETLK": _lock(Opcode.SETLK),
}


OPENS = {name for name in REQUESTS if name.startswith("OPEN ")}
CREATES = {name for name in REQUESTS if name.startswith("CREATE ")}


def run_case(daemon, kind, origin, request, number):
    """Run one case on a fresh tree; a daemon left blocked or dead is replaced afterwards."""
    case = None
    try:
        case = Case(daemon, kind, origin, number)
        return REQUESTS[request](case)
    except Blocked as exc:
        daemon.replace(case.fifos() if case else ())
        return exc.args[0] if exc.args else Outcome("blocked")
    except Died:
        daemon.replace()
        return Outcome("died")
    except OSError as exc:  # setting the case up failed: that is its outcome
        return Outcome(f"setup {_errname(exc.errno)}")


def judge(fastvfs, reference):
    """Why the pair breaks the rule (fastvfs never less strict than the reference), or None."""
    silent = ("blocked", "died")
    if fastvfs.answer in silent:
        return None if reference.answer in silent else \
            f"fastvfs {fastvfs.answer} where the reference answers"
    if fastvfs.answer != "ok":
        return None
    if reference.answer in silent:
        # Nothing to compare with; still, a handle is only ever to a regular file.
        if fastvfs.opened not in (None, "regular"):
            return f"fastvfs opened a {fastvfs.opened} (the reference {reference.answer})"
        return None
    if reference.answer != "ok":
        return "fastvfs grants what the reference refuses"
    for step in ("read", "write"):
        got, ref = getattr(fastvfs, step), getattr(reference, step)
        if got in silent and ref not in silent:
            return f"fastvfs's {step.upper()} {got} where the reference's answers"
        if got is not None and got.endswith("B") and not (ref or "").endswith("B"):
            return f"fastvfs's {step.upper()} through the handle succeeds, the reference's not"
    if fastvfs.opened != reference.opened and fastvfs.opened != "regular":
        return f"fastvfs opened a {fastvfs.opened}, the reference a {reference.opened}"
    return None


SPECIAL = {"fifo", "socket", "chardev", "blockdev"}
NOT_REGULAR = SPECIAL | {"directory", "symlink"}
# Differences that do not break the rule: fastvfs stricter than the reference, or both refusing
# with different errnos.  (request names, file types, reference outcome, fastvfs outcome, reason);
# outcomes are fnmatch patterns of str(Outcome).  Any other difference that keeps the rule is
# printed as UNDOCUMENTED.
ALLOWED = [
    (OPENS, SPECIAL, "EBADF", "EACCES",
     "fastvfs refuses to open a non-regular file with EACCES, the reference with EBADF"),
    (OPENS, {"symlink"}, "EBADF", "ELOOP",
     "fastvfs refuses a symlink as open(O_NOFOLLOW) would; the reference says EBADF"),
    (OPENS, {"directory"}, "ok *opened=directory", "EISDIR",
     "fastvfs opens directories through OPENDIR only; the reference also through OPEN"),
    (CREATES, {"regular", "directory"}, "died", "*",
     "the reference aborts on CREATE of an existing name (O_CREAT without a mode, glibc "
     "fortify)"),
    (CREATES, SPECIAL | {"symlink"}, "EBADF", "E*",
     "both refuse an existing non-regular name through CREATE, fastvfs with its own errno"),
    ({"SETATTR size=0"}, SPECIAL | {"symlink"}, "EBADF", "EINVAL",
     "truncate(2) of a non-regular file is EINVAL; the reference fails opening it, EBADF"),
    ({"READLINK"}, NOT_REGULAR - {"symlink"} | {"regular"}, "ENOENT", "EINVAL",
     "readlink(2) of a non-symlink is EINVAL; the reference's readlinkat(fd, \"\") says ENOENT"),
    ({"GETLK", "SETLK"}, NOT_REGULAR, "E*", "EINVAL",
     "fastvfs serves record locks on regular files only (EINVAL); the reference fails opening"),
]


# The same for malformed inputs: (group, cases or None for all, reference aftermath, fastvfs
# aftermath, reason).
ALLOWED_MALFORMED = [
    ("message", None, "connection closed, *", "refused, serving",
     "the reference panics (exit 1) on a message it cannot take; fastvfs refuses it, serves on"),
    ("message", None, "accepted, *", "refused, serving",
     "the reference does not check this message; fastvfs refuses it (test_hostile)"),
    ("chain", None, "kept, *", "returned*, serving",
     "the reference exits on a malformed chain; fastvfs returns the chain and serves on"),
    ("chain", {"len_beyond_buffers"}, "returned, reply 96 bytes error 0, serving",
     "returned, reply 16 bytes error -22, serving",
     "the reference serves the request whatever fuse_in_header.len says; fastvfs answers EINVAL"),
    ("FUSE request", {"unknown node"}, "EBADF, serving", "ENOENT, serving",
     "a node id never given out is ENOENT in fastvfs, EBADF in the reference"),
]


def documented_malformed(group, case, reference, fastvfs):
    for allowed_group, cases, ref, got, reason in ALLOWED_MALFORMED:
        if (group == allowed_group and (cases is None or case in cases)
                and fnmatch.fnmatchcase(str(reference), ref)
                and fnmatch.fnmatchcase(str(fastvfs), got)):
            return reason
    return None


def documented(request, kind, reference, fastvfs):
    for requests, kinds, ref, got, reason in ALLOWED:
        if (request in requests and kind in kinds and fnmatch.fnmatchcase(str(reference), ref)
                and fnmatch.fnmatchcase(str(fastvfs), got)):
            return reason
    return None


@pytest.fixture(scope="module")
def summary(request):
    """Collects the cases, violations and differences of the module's tests; prints the tally
    after the last one: violations and undocumented differences one by one, documented
    differences counted by reason."""
    seen = {"cases": 0, "violations": [], "undocumented": [], "documented": {}}
    yield seen
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        _print_summary(reporter, seen)


def _print_summary(reporter, seen):
    documented_count = sum(seen["documented"].values())
    reporter.write_line("")
    reporter.write_line(
        f"differential: {seen['cases']} cases run on both daemons; "
        f"{len(seen['violations'])} break the rule, {documented_count} documented and "
        f"{len(seen['undocumented'])} undocumented allowed differences")
    for line in seen["violations"]:
        reporter.write_line(f"  FAIL {line}")
    for line in seen["undocumented"]:
        reporter.write_line(f"  UNDOCUMENTED {line}")
    for reason, count in seen["documented"].items():
        reporter.write_line(f"  {count:4d} x {reason}")


def record_difference(summary, label, reason):
    if reason is None:
        summary["undocumented"].append(label)
    else:
        summary["documented"][reason] = summary["documented"].get(reason, 0) + 1


@pytest.fixture
def daemons(tmp_path):
    started = []

    def start(name):
        started.append(Daemon(name, tmp_path))
        return started[-1]
    yield start
    for daemon in started:
        daemon.launcher.shutdown()


@pytest.mark.parametrize("kind", list(KINDS))
def test_file_type_requests_against_the_reference(daemons, summary, kind):
    fastvfs, reference = daemons("fastvfs"), daemons("reference")
    violations = []
    number = 0
    for origin in ORIGINS:
        for request in REQUESTS:
            number += 1
            got = run_case(fastvfs, kind, origin, request, number)
            ref = run_case(reference, kind, origin, request, number)
            summary["cases"] += 1
            label = f"{kind} ({origin}) {request}: fastvfs {got} / reference {ref}"
            broken = judge(got, ref)
            if broken:
                violations.append(f"{label}: {broken}")
            elif str(got) != str(ref):
                record_difference(summary, label, documented(request, kind, ref, got))
    print(f"{number} cases; fastvfs started {fastvfs.starts}x, reference {reference.starts}x")
    if reference.serving() and not fastvfs.serving():
        violations.append(f"{kind}: fastvfs stopped serving, the reference serves")
    summary["violations"] += violations
    assert not violations, "\n".join(violations)


# -- malformed vhost-user messages, descriptor chains and FUSE requests ----------------------

@dataclasses.dataclass(frozen=True)
class Aftermath:
    """What one malformed input got (``answer``) and whether the daemon still serves after it:
    "serving" (vhost-user and FUSE requests answered), "not serving" (alive, not answering),
    "exited" (status 0: it ended the session) or "crashed (status)"."""

    answer: str
    state: str

    def __str__(self):
        return f"{self.answer}, {self.state}"


def _state(daemon):
    if daemon.serving():
        return "serving"
    try:
        status = daemon.process.wait(EXIT_WAIT)
    except subprocess.TimeoutExpired:
        return "not serving"
    return "exited" if status == 0 else f"crashed ({status})"


def _malformed(daemon, send, case):
    """Aftermath of ``send(daemon, case) -> answer``; the daemon is replaced unless it still
    serves, so that each input meets a working daemon."""
    try:
        answer = send(daemon, case)
    except (TimeoutError, Blocked):
        answer = "no answer"
    except (ConnectionError, Died):
        answer = "connection closed"
    except VhostUserError as exc:
        answer = f"bad reply: {exc}"
    aftermath = Aftermath(answer, _state(daemon))
    if aftermath.state != "serving":
        daemon.replace()
    return aftermath


def judge_malformed(fastvfs, reference):
    """Why fastvfs did worse with a malformed input than it may, or None: it must never crash
    or leave an input unanswered, nor serve less afterwards than the reference."""
    def rank(state):
        return {"serving": 2, "not serving": 1, "exited": 1}.get(state, 0)
    if fastvfs.state.startswith("crashed"):
        return f"fastvfs {fastvfs.state}"
    if fastvfs.answer == "no answer":
        return "fastvfs never answers"
    if rank(fastvfs.state) < rank(reference.state):
        return f"fastvfs is {fastvfs.state}, the reference {reference.state}"
    if fastvfs.answer == "accepted" and reference.answer != "accepted":
        return "fastvfs accepts what the reference does not"
    return None


def _message(daemon, case):
    return "accepted" if send_bad_message(daemon.frontend, case) == 0 else "refused"


def _chain(daemon, shape):
    frontend = daemon.frontend
    head, reply = publish_bad_chain(frontend, shape)
    # Wait in slices, to stop waiting as soon as the daemon exits.
    for _ in range(int(TIMEOUT / 0.25)):
        if chain_returned(frontend.queues[1], head, 0.25):
            break
        if daemon.process.poll() is not None:
            return "kept"
    else:
        return "kept"
    if shape in BAD_CHAIN_SHAPES_WITH_REPLY:
        length, error, _ = abi.out_header.unpack(frontend.memory.read(reply, 16))
        return f"returned, reply {length} bytes error {error}"
    return "returned"


def _fuse_request(daemon, name):
    reply = daemon.call(send_bad_fuse_request, name)
    return "accepted" if reply.error == 0 else _errname(reply.error)


MALFORMED = {
    "message": (sorted(BAD_MESSAGES), _message),
    "chain": (BAD_CHAIN_SHAPES, _chain),
    "FUSE request": (list(BAD_FUSE_REQUESTS), _fuse_request),
}


@pytest.mark.parametrize("group", list(MALFORMED))
def test_malformed_inputs_against_the_reference(daemons, summary, group):
    """The malformed inputs of test_hostile, each sent to both daemons: fastvfs must not die,
    block or stop serving where the reference survives, nor accept what the reference refuses."""
    cases, send = MALFORMED[group]
    fastvfs, reference = daemons("fastvfs"), daemons("reference")
    violations = []
    for case in cases:
        got = _malformed(fastvfs, send, case)
        ref = _malformed(reference, send, case)
        summary["cases"] += 1
        label = f"{group} {case!r}: fastvfs {got} / reference {ref}"
        broken = judge_malformed(got, ref)
        if broken:
            violations.append(f"{label}: {broken}")
        elif str(got) != str(ref):
            record_difference(summary, label, documented_malformed(group, case, ref, got))
    print(f"{len(cases)} cases; fastvfs started {fastvfs.starts}x, "
          f"reference {reference.starts}x")
    summary["violations"] += violations
    assert not violations, "\n".join(violations)
