"""``--translate-uid``/``--translate-gid``: guest ids become host ids on the way in (creation
credentials, SETATTR owners), host ids become guest ids on the way out (every attribute reply,
the hot path's LOOKUP and GETATTR included), with the daemon's defaults otherwise."""

import errno
import os

import pytest

from tests.integration.test_attacks import custom  # noqa: F401  (fixture)

HOST_UID, HOST_GID = 1234, 2345
RULES = (
    "--translate-uid=forbid-guest:5000:10",
    "--translate-uid=map:1000:101000:100",
    f"--translate-uid=squash-guest:0:{HOST_UID}:65536",
    f"--translate-uid=squash-host:{HOST_UID}:0:1",
    "--translate-gid=map:1000:201000:100",
    f"--translate-gid=squash-guest:0:{HOST_GID}:65536",
    f"--translate-gid=squash-host:{HOST_GID}:0:1",
)


def share(tmp_path):
    """A shared directory the squashed host user owns, as a user's own share would be."""
    shared = tmp_path / "share"
    shared.mkdir()
    os.chown(shared, HOST_UID, HOST_GID)
    return shared


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_translated_owners_both_ways(custom, tmp_path):  # noqa: F811
    frontend, client, shared = custom(*RULES, shared=share(tmp_path))
    # Guest root creates: squashed to the host user, shown back as root.
    entry, handle = client.create(1, b"mine")
    client.release(entry.nodeid, handle.fh)
    assert owner(shared / "mine") == (HOST_UID, HOST_GID)
    assert (entry.attr.uid, entry.attr.gid) == (0, 0)
    # A second LOOKUP of a known inode and a GETATTR (what the hot path would answer) too.
    again = client.lookup(1, b"mine")
    assert (again.attr.uid, again.attr.gid) == (0, 0)
    attr = client.getattr(entry.nodeid)
    assert (attr.attr.uid, attr.attr.gid) == (0, 0)

    # A mapped guest user: its range on the host, and back.
    home = client.mkdir(1, b"home", mode=0o777)
    with client.as_user(1005, 1006):
        theirs, handle = client.create(home.nodeid, b"theirs")
        client.release(theirs.nodeid, handle.fh)
        sub = client.mkdir(home.nodeid, b"sub")
    assert owner(shared / "home" / "theirs") == (101005, 201006)
    assert owner(shared / "home" / "sub") == (101005, 201006)
    assert (theirs.attr.uid, theirs.attr.gid) == (1005, 1006)
    assert (sub.attr.uid, sub.attr.gid) == (1005, 1006)

    # SETATTR sets the host owner the guest owner maps to.
    attr = client.setattr(entry.nodeid, uid=1001, gid=1002)
    assert (attr.attr.uid, attr.attr.gid) == (1001, 1002)
    assert owner(shared / "mine") == (101001, 201002)

    # Host files no rule covers keep their ids; READDIRPLUS shows translated owners too.
    (shared / "home" / "foreign").write_bytes(b"")
    os.chown(shared / "home" / "foreign", 4242, 4343)
    listed = {e.name: e.entry.attr for e in client.listdir(home.nodeid, plus=True)
              if e.entry.nodeid}
    assert (listed[b"theirs"].uid, listed[b"theirs"].gid) == (1005, 1006)
    assert (listed[b"foreign"].uid, listed[b"foreign"].gid) == (4242, 4343)
    # Again, with every inode now known (the entries then come from the C side).
    listed = {e.name: e.entry.attr for e in client.listdir(home.nodeid, plus=True)
              if e.entry.nodeid}
    assert (listed[b"theirs"].uid, listed[b"sub"].uid, listed[b"foreign"].uid) == \
        (1005, 1005, 4242)


def test_forbidden_guest_ids_are_refused(custom, tmp_path):  # noqa: F811
    frontend, client, shared = custom(*RULES, shared=share(tmp_path))
    home = client.mkdir(1, b"home", mode=0o777)
    with client.as_user(5003, 100):
        with pytest.raises(OSError) as exc:
            client.create(home.nodeid, b"nope")
        assert exc.value.errno == errno.EPERM
    assert os.listdir(shared / "home") == []
    entry, _ = client.create(home.nodeid, b"file")
    with pytest.raises(OSError) as exc:
        client.setattr(entry.nodeid, uid=5009)
    assert exc.value.errno == errno.EPERM
    assert owner(shared / "home" / "file") == (HOST_UID, HOST_GID)


@pytest.mark.parametrize("rule", ["squash:0:1:1", "map:0:1", "map:0:1:0", "map:x:1:1",
                                  "forbid-guest:1:2:3", "map:4294967295:0:2"])
def test_malformed_rules_are_refused(rule, capsys):
    from fastvfs import cli
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--socket-path", "s", f"--translate-uid={rule}"])
    assert "argument --translate-uid: " in capsys.readouterr().err
