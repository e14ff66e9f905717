"""The --xattrmap rule language."""

import errno
import os

import pytest

from fastvfs import _ring
from fastvfs.fs.passthrough import PassthroughFs
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
    fs = PassthroughFs(tmp_path, _ring.HandleTable(4),
                       xattrmap=XattrMap(":prefix:all:trusted.:user.g.::bad:server::user.g.::ok:all:::"))
    nodeid, _ = fs.lookup(1, b"f")
    fs.setxattr(nodeid, b"trusted.t", b"1", 0)
    assert os.getxattr(tmp_path / "f", "user.g.trusted.t") == b"1"  # stored under the prefix
    os.setxattr(tmp_path / "f", "user.plain", b"2")
    assert fs.getxattr(nodeid, b"trusted.t") == b"1"
    assert sorted(fs.listxattr(nodeid).split(b"\0")[:-1]) == [b"trusted.t", b"user.plain"]
    fs.removexattr(nodeid, b"trusted.t")
    assert "user.g.trusted.t" not in os.listxattr(tmp_path / "f")
