"""The Rust virtiofsd 1.13's options that change what the engine and the file system do:
--security-label (FUSE_SECURITY_CTX), --allow-mmap (FUSE_DIRECT_IO_ALLOW_MMAP),
--preserve-noatime, READDIRPLUS under --cache never, and their command-line forms."""

import errno
import fcntl
import os
import stat
import struct

import pytest

from fastvfs.fs._tables import HandleTable
from fastvfs import cli
from fastvfs.fs.passthrough import PassthroughFs
from fastvfs.fs.xattrmap import XattrMap
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs.fuse.engine import FuseEngine

ROOT = abi.FUSE_ROOT_ID
LABEL = b"system_u:object_r:svirt_image_t:s0\0"  # as SELinux sends it, NUL included


def secctx_block(*labels):
    """A fuse_secctx_header block as linux fs/fuse/dir.c lays it out."""
    records = b""
    for name, value in labels:
        record = abi.secctx.pack(len(value), 0) + name + b"\0" + value
        records += record + bytes(abi.rec_align(len(record)) - len(record))
    return abi.ext_header.pack(abi.ext_header.size + len(records), len(labels)) + records


class Session:
    def __init__(self, root, *, minor=38, offered=abi.FUSE_SECURITY_CTX, xattrmap=None,
                 preserve_noatime=False, cache="auto", **engine):
        self.handles = HandleTable(256)
        self.fs = PassthroughFs(root, self.handles, xattrmap=xattrmap,
                                preserve_noatime=preserve_noatime)
        self.engine = FuseEngine(self.fs, cache, **engine)
        self.unique = 0
        offered |= abi.FUSE_INIT_EXT
        out = abi.init_out.unpack(self.ok(Opcode.INIT, 0, abi.init_in.pack(
            7, minor, 1 << 17, offered & 0xFFFFFFFF, offered >> 32)))
        self.flags = out[3] | out[10] << 32

    def raw(self, opcode, nodeid, body, ext=b""):
        """A request; ``ext`` goes after the arguments as a request extension (total_extlen)."""
        self.unique += 1
        req = abi.in_header.pack(abi.IN_HEADER_SIZE + len(body) + len(ext), opcode,
                                 self.unique, nodeid, 0, 0, 1, len(ext) // 8, 0) + body + ext
        return self.engine.handle(req, 1 << 20)

    def ok(self, *args, **kw):
        result = self.raw(*args, **kw)
        assert result is not None and result[0] == 0, result
        return result[1]


def label_of(path):
    return os.getxattr(path, "security.selinux", follow_symlinks=False)


class TestSecurityLabel:
    @pytest.fixture
    def s(self, tmp_path):
        sess = Session(tmp_path, security_label=True)
        assert sess.flags & abi.FUSE_SECURITY_CTX
        return sess

    def test_not_offered_without_the_option(self, tmp_path):
        sess = Session(tmp_path)
        assert not sess.flags & abi.FUSE_SECURITY_CTX
        # ... and a security context extension is then refused.
        body = abi.mkdir_in.pack(0o755, 0) + b"d\0"
        assert sess.raw(Opcode.MKDIR, ROOT, body, secctx_block((b"security.selinux", LABEL)))[0] \
            == -errno.EINVAL
        assert not (tmp_path / "d").exists()

    def test_every_creation_carries_the_label(self, s, tmp_path):
        ext = secctx_block((b"security.selinux", LABEL))
        s.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"dir\0", ext)
        s.ok(Opcode.CREATE, ROOT, abi.create_in.pack(os.O_RDWR, 0o644, 0, 0) + b"file\0", ext)
        s.ok(Opcode.MKNOD, ROOT, abi.mknod_in.pack(stat.S_IFIFO | 0o600, 0, 0, 0) + b"fifo\0", ext)
        s.ok(Opcode.SYMLINK, ROOT, b"link\0file\0", ext)
        for name in ("dir", "file", "fifo", "link"):
            assert label_of(tmp_path / name) == LABEL, name
        assert os.readlink(tmp_path / "link") == "file"
        data = s.ok(Opcode.TMPFILE, ROOT, abi.create_in.pack(os.O_RDWR, 0o600, 0, 0), ext)
        fh = abi.open_out.unpack_from(data, abi.ENTRY_OUT_SIZE)[0]
        with s.handles.borrow(fh) as fd:
            assert os.getxattr(fd, "security.selinux") == LABEL

    def test_before_7_38_the_block_follows_the_arguments(self, tmp_path):
        # 7.36/7.37 (Linux 6.1): no total_extlen, the block is the request's last argument.
        sess = Session(tmp_path, minor=37, security_label=True)
        block = secctx_block((b"security.selinux", LABEL))
        sess.ok(Opcode.CREATE, ROOT,
                abi.create_in.pack(os.O_RDWR, 0o644, 0, 0) + b"file\0" + block)
        sess.ok(Opcode.SYMLINK, ROOT, b"link\0file\0" + block)
        assert label_of(tmp_path / "file") == label_of(tmp_path / "link") == LABEL
        assert os.readlink(tmp_path / "link") == "file"

    def test_no_context_no_label(self, s, tmp_path):
        # The guest has no LSM that labels: nr_secctx 0.
        s.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"plain\0", secctx_block())
        s.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"bare\0")
        for name in ("plain", "bare"):
            assert "security.selinux" not in os.listxattr(tmp_path / name)

    @pytest.mark.parametrize("name", [b"user.selinux", b"trusted.x", b"security.capability"])
    def test_only_lsm_labels_are_set(self, s, tmp_path, name):
        body = abi.mkdir_in.pack(0o755, 0) + b"d\0"
        assert s.raw(Opcode.MKDIR, ROOT, body, secctx_block((name, b"x")))[0] == -errno.EINVAL
        # The object the label was refused for is gone again.
        assert not (tmp_path / "d").exists()
        body = abi.create_in.pack(os.O_RDWR, 0o644, 0, 0) + b"f\0"
        assert s.raw(Opcode.CREATE, ROOT, body, secctx_block((name, b"x")))[0] == -errno.EINVAL
        assert not (tmp_path / "f").exists()
        assert len(s.fs.inodes) == 1   # no node id left behind

    @pytest.mark.parametrize("block", [
        abi.ext_header.pack(8, 40),                                # not a context type
        abi.ext_header.pack(16, 1) + abi.secctx.pack(4, 0),           # no room for the name
        abi.ext_header.pack(24, 1) + abi.secctx.pack(99, 0) + b"security.x\0"[:8],
        abi.ext_header.pack(32, 1) + abi.secctx.pack(99, 0) + b"security.a\0" + bytes(5),
    ], ids=["type-40", "no-name", "name-without-nul", "value-past-the-end"])
    def test_malformed_contexts(self, s, tmp_path, block):
        block += bytes(abi.rec_align(len(block)) - len(block))
        body = abi.mkdir_in.pack(0o755, 0) + b"d\0"
        assert s.raw(Opcode.MKDIR, ROOT, body, block)[0] == -errno.EINVAL
        assert not (tmp_path / "d").exists()

    def test_the_xattr_map_applies(self, tmp_path):
        rules = ":prefix:all:security.selinux:user.virtiofs.::ok:all:::"
        sess = Session(tmp_path, security_label=True, xattrmap=XattrMap(rules))
        sess.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"d\0",
                secctx_block((b"security.selinux", LABEL)))
        assert os.getxattr(tmp_path / "d", "user.virtiofs.security.selinux") == LABEL
        assert "security.selinux" not in os.listxattr(tmp_path / "d")

    def test_with_the_group_extension(self, tmp_path):
        sess = Session(tmp_path, security_label=True,
                       offered=abi.FUSE_SECURITY_CTX | abi.FUSE_CREATE_SUPP_GROUP)
        groups = struct.pack("<II", 1, 1234)
        ext = (secctx_block((b"security.selinux", LABEL)) +
               abi.ext_header.pack(abi.ext_header.size + len(groups), abi.FUSE_EXT_GROUPS) + groups)
        sess.ok(Opcode.MKDIR, ROOT, abi.mkdir_in.pack(0o755, 0) + b"d\0", ext)
        assert label_of(tmp_path / "d") == LABEL


def test_allow_mmap_offers_direct_io_allow_mmap(tmp_path):
    offered = abi.FUSE_DIRECT_IO_ALLOW_MMAP
    assert not Session(tmp_path, offered=offered, cache="never").flags & offered
    assert Session(tmp_path, offered=offered, cache="never", allow_mmap=True).flags & offered
    assert abi.FUSE_DIRECT_IO_ALLOW_MMAP == 1 << 36   # linux/fuse.h 7.39


@pytest.mark.parametrize("preserve", [False, True])
def test_o_noatime_dropped_unless_preserved(tmp_path, preserve):
    (tmp_path / "f").write_text("x")
    sess = Session(tmp_path, preserve_noatime=preserve)
    nodeid = abi.entry_out_head.unpack_from(sess.ok(Opcode.LOOKUP, ROOT, b"f\0"))[0]
    fh = abi.open_out.unpack_from(
        sess.ok(Opcode.OPEN, nodeid, abi.open_in.pack(os.O_RDONLY | os.O_NOATIME, 0)))[0]
    data = sess.ok(Opcode.CREATE, ROOT,
                   abi.create_in.pack(os.O_RDWR | os.O_NOATIME, 0o644, 0, 0) + b"g\0")
    created = abi.open_out.unpack_from(data, abi.ENTRY_OUT_SIZE)[0]
    for handle in (fh, created):
        with sess.handles.borrow(handle) as fd:
            assert bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NOATIME) == preserve


def test_readdirplus_not_offered_with_cache_never(tmp_path):
    offered = abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO
    assert not Session(tmp_path, offered=offered, cache="never").flags & offered
    assert Session(tmp_path, offered=offered, cache="auto").flags & offered


class TestCommandLine:
    def parse(self, *argv):
        p = cli.parser()
        options = p.parse_args(["--socket-path", "/tmp/s", "--shared-dir", "/tmp", *argv])
        cli.apply_compat_options(p, options)
        return options

    def test_defaults(self):
        o = self.parse()
        assert (o.security_label, o.allow_mmap, o.preserve_noatime) == (False, False, False)
        assert (o.migration_mode, o.migration_on_error) == ("find-paths", "abort")
        assert not (o.migration_verify_handles or o.migration_confirm_paths)

    def test_the_options_and_their_compat_forms(self):
        o = self.parse("--security-label", "--allow-mmap", "--preserve-noatime",
                       "--migration-mode=file-handles", "--migration-on-error", "guest-error")
        assert o.security_label and o.allow_mmap and o.preserve_noatime
        assert (o.migration_mode, o.migration_on_error) == ("file-handles", "guest-error")
        assert self.parse("-o", "security_label").security_label
        assert not self.parse("--security-label", "-o", "no_security_label").security_label

    def test_security_label_implies_xattr(self, tmp_path):
        p = cli.parser()
        o = p.parse_args(["--socket-path", "s", "--shared-dir", str(tmp_path), "--security-label"])
        assert cli.share_options(p, o).xattr

    def test_migration_checks_as_the_rust_daemon(self, tmp_path, capsys):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--socket-path", str(tmp_path / "s"), "--shared-dir", str(tmp_path),
                      "--migration-mode=file-handles", "--migration-verify-handles"])
        assert exc.value.code == 2
        assert "--migration-mode=find-paths only" in capsys.readouterr().err

    def test_capabilities_name_only_what_is_supported(self):
        # No "migrate-precopy": fastvfs offers no VHOST_USER_PROTOCOL_F_DEVICE_STATE.
        assert cli.capabilities() == {"type": "fs", "features": ["separate-options"]}
