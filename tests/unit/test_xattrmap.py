"""The --xattrmap rule language."""

import errno
import os

import pytest

from fastvfs.fs._tables import HandleTable
from fastvfs.fs.passthrough import ROOT_CALLER, PassthroughFs
from fastvfs.fs.xattrmap import XattrMap, parse


def test_parse_separators_whitespace_and_scopes():
    rules = parse(" :prefix:all:trusted.:user.virtiofs.:\n  /ok/client/user.//  |bad|server||security.|")
    assert [(r.type, r.client, r.server, r.key, r.prepend) for r in rules] == [
        ("prefix", True, True, b"trusted.", b"user.virtiofs."),
        ("ok", True, False, b"user.", b""),
        ("bad", False, True, b"", b"security.")]


@pytest.mark.parametrize("spec", ["", "   ", ":prefix:all:a:", ":nope:all:::", ":ok:everyone:::",
                                  ":map:a:b:"])
def test_parse_errors(spec):
    with pytest.raises(ValueError):
        parse(spec)


def test_prefix_both_ways_and_catch_all():
    m = XattrMap(":prefix:all:trusted.:user.virtiofs.::bad:server::user.virtiofs.::ok:all:::")
    assert m.to_host(b"trusted.overlay.opaque") == b"user.virtiofs.trusted.overlay.opaque"
    assert m.to_guest(b"user.virtiofs.trusted.overlay.opaque") == b"trusted.overlay.opaque"
    assert m.to_host(b"user.color") == b"user.color"
    assert m.to_guest(b"security.selinux") == b"security.selinux"


def test_bad_unsupported_and_unmatched():
    m = XattrMap("/unsupported/all/security.selinux/security.selinux//bad/client/user.secret//"
                 "/ok/client/user.//")
    with pytest.raises(OSError) as exc:
        m.to_host(b"security.selinux")
    assert exc.value.errno == errno.ENOTSUP
    assert m.to_guest(b"security.selinux") is None
    with pytest.raises(OSError) as exc:
        m.to_host(b"user.secret.x")
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        m.to_host(b"user.secret.x", getting=True)
    assert exc.value.errno == errno.ENODATA
    with pytest.raises(OSError) as exc:
        m.to_host(b"trusted.x")  # no rule: refused
    assert exc.value.errno == errno.EPERM
    assert m.to_guest(b"user.x") is None  # no server rule: hidden


def test_mapping_applied_by_the_file_system(tmp_path):
    (tmp_path / "f").write_text("")
    fs = PassthroughFs(tmp_path, HandleTable(4),
                       xattrmap=XattrMap(":prefix:all:trusted.:user.g.::bad:server::user.g.::ok:all:::"))
    nodeid, _ = fs.lookup(1, b"f")
    fs.setxattr(nodeid, b"trusted.t", b"1", 0)
    assert os.getxattr(tmp_path / "f", "user.g.trusted.t") == b"1"  # stored under the prefix
    os.setxattr(tmp_path / "f", "user.plain", b"2")
    assert fs.getxattr(nodeid, b"trusted.t") == b"1"
    assert sorted(fs.listxattr(nodeid).split(b"\0")[:-1]) == [b"trusted.t", b"user.plain"]
    fs.removexattr(nodeid, b"trusted.t")
    assert "user.g.trusted.t" not in os.listxattr(tmp_path / "f")


def test_remapped_capability_dropped_by_the_file_system(tmp_path):
    """The engine's paths (the hot path's are in tests/integration/test_attacks_xattr.py):
    write, fallocate, truncate, chown, open and create with O_TRUNC remove the mapped
    security.capability, as the kernel removes the real one; an empty write keeps it."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 16)
    fs = PassthroughFs(tmp_path, HandleTable(16),
                       xattrmap=XattrMap(":prefix:all:security.:user.virtiofs.::ok:all:::"))
    nodeid, _ = fs.lookup(1, b"f")
    fh = fs.open(nodeid, os.O_RDWR)

    def capable():
        fs.setxattr(nodeid, b"security.capability", b"\x01\x00\x00\x02" + bytes(16), 0)
        assert "user.virtiofs.security.capability" in os.listxattr(path)

    def dropped():
        return "user.virtiofs.security.capability" not in os.listxattr(path)

    capable()
    fs.write(fh, 0, b"")
    assert not dropped()
    for change in (lambda: fs.write(fh, 0, b"y"), lambda: fs.fallocate(fh, 0, 0, 4096),
                   lambda: fs.setattr(nodeid, size=3), lambda: fs.setattr(nodeid, fh=fh, size=2),
                   lambda: fs.setattr(nodeid, uid=5), lambda: fs.setattr(nodeid, gid=5),
                   lambda: fs.release(fs.open(nodeid, os.O_RDWR | os.O_TRUNC)),
                   lambda: fs.release(fs.create(1, b"f", 0o644, os.O_RDWR | os.O_TRUNC,
                                                ROOT_CALLER)[2])):
        capable()
        change()
        assert dropped()
    capable()
    fs.setattr(nodeid, mode=0o700)
    assert not dropped()
