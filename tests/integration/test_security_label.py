"""--security-label against a daemon with its defaults (``--sandbox namespace --seccomp kill``,
the default capabilities): the label a Linux 6.1 guest appends to MKDIR and CREATE
(fuse_secctx_header after the arguments) ends up on the new host object, or the creation
fails and leaves nothing behind."""

import errno
import os

import pytest

from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode

from .conftest import BackendLauncher, BackendSpec
from tests.deployed import FASTVFS

ROOT = abi.FUSE_ROOT_ID
LABEL = b"system_u:object_r:svirt_image_t:s0\0"
TO_USER = ":prefix:all:security.selinux:user.virtiofs.::ok:all:::"


@pytest.fixture
def daemon(tmp_path):
    """daemon(*extra_args) -> (client, shared directory)."""
    launchers = []

    def start(*extra):
        run = tmp_path / f"run{len(launchers)}"
        run.mkdir()
        launcher = BackendLauncher("fastvfs", BackendSpec(lambda sock, shared: [
            *FASTVFS, "--socket-path", sock, "--shared-dir", shared, "--log-level", "debug",
            *extra]), run)
        launchers.append(launcher)
        _, client, shared = launcher()
        return client, shared

    yield start
    for launcher in launchers:
        launcher.shutdown()


def secctx_block(name, value):
    record = abi.secctx.pack(len(value), 0) + name + b"\0" + value
    record += bytes(abi.rec_align(len(record)) - len(record))
    return abi.ext_header.pack(abi.ext_header.size + len(record), 1) + record


def mkdir(client, name, label_name=b"security.selinux"):
    body = abi.mkdir_in.pack(0o755, 0) + name + b"\0" + secctx_block(label_name, LABEL)
    return client.call(Opcode.MKDIR, ROOT, body, reply_len=abi.ENTRY_OUT_SIZE)


def create(client, name):
    body = (abi.create_in.pack(os.O_RDWR, 0o644, 0, 0) + name + b"\0" +
            secctx_block(b"security.selinux", LABEL))
    return client.call(Opcode.CREATE, ROOT, body,
                       reply_len=abi.ENTRY_OUT_SIZE + abi.open_out.size)


def test_labels_land_through_the_xattr_map(daemon):
    client, shared = daemon("--security-label", "--xattrmap", TO_USER)
    assert client.init_out.all_flags & abi.FUSE_SECURITY_CTX
    mkdir(client, b"dir")
    create(client, b"file")
    for name in ("dir", "file"):
        assert os.getxattr(os.path.join(shared, name), "user.virtiofs.security.selinux") == LABEL
    # The guest reads its label back under its own name (--security-label implies --xattr).
    node = client.lookup(ROOT, b"dir")[0]
    reply = client.call(Opcode.GETXATTR, node, abi.getxattr_in.pack(256, 0) +
                        b"security.selinux\0", data_len=256)
    assert reply.data.rstrip(b"\0") == LABEL.rstrip(b"\0")


def test_a_refused_label_undoes_the_creation(daemon):
    client, shared = daemon("--security-label", "--xattrmap", TO_USER)
    # The host refuses user.* attributes on symlinks: the link goes again.
    body = b"link\0target\0" + secctx_block(b"security.selinux", LABEL)
    with pytest.raises(OSError) as exc:
        client.call(Opcode.SYMLINK, ROOT, body, reply_len=abi.ENTRY_OUT_SIZE)
    assert exc.value.errno == errno.EPERM
    # A name outside security.* is no label.
    with pytest.raises(OSError) as exc:
        mkdir(client, b"dir", label_name=b"trusted.x")
    assert exc.value.errno == errno.EINVAL
    assert os.listdir(shared) == []


@pytest.mark.skipif(os.path.exists("/sys/fs/selinux/enforce"),
                    reason="an SELinux host decides security.selinux by its own policy")
def test_unmapped_the_label_is_the_host_label(daemon):
    client, shared = daemon("--security-label")
    mkdir(client, b"dir")
    create(client, b"file")
    for name in ("dir", "file"):
        assert os.getxattr(os.path.join(shared, name), "security.selinux") == LABEL


def test_migration_options_start_the_daemon_with_a_warning(tmp_path):
    """The Rust virtiofsd's migration options, which fastvfs takes without effect: the daemon
    starts, serves, and says so."""
    launcher = BackendLauncher("fastvfs", BackendSpec(lambda sock, shared: [
        *FASTVFS, "--socket-path", sock, "--shared-dir", shared, "--migration-mode",
        "file-handles", "--migration-on-error=guest-error"]), tmp_path)
    try:
        _, client, _ = launcher()
        assert client.lookup(ROOT, b".")[0] == ROOT
    finally:
        launcher.shutdown()
    log = (tmp_path / "backend0.log").read_text()
    assert "--migration-*: no effect" in log
