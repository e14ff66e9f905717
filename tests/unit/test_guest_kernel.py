"""The guest kernel's package: a meta package (the stock ``linux-image-amd64`` or a series
such as ``linux-image-6.12-amd64``) is resolved to the versioned image it depends on, which
alone ships the kernel and its modules; a versioned name is taken as it is."""

import subprocess

import pytest

from fastvfs_testing import guest

DEPENDS = {
    "linux-image-amd64": "linux-image-amd64\n  Depends: linux-image-6.1.0-41-amd64\n",
    "linux-image-6.12-amd64": "linux-image-6.12-amd64\n  Depends: linux-image-6.12.118+deb12-amd64\n",
    "linux-image-6.1.0-41-amd64": "linux-image-6.1.0-41-amd64\n  Depends: kmod\n",
    "linux-image-6.12.118+deb12-amd64": "linux-image-6.12.118+deb12-amd64\n  Depends: kmod\n",
}


@pytest.fixture
def apt_cache(monkeypatch):
    def run(argv, **kwargs):
        assert argv[:2] == ["apt-cache", "depends"]
        return subprocess.CompletedProcess(argv, 0, DEPENDS[argv[2]], "")
    monkeypatch.setattr(guest.subprocess, "run", run)


@pytest.mark.parametrize("package,image", [
    ("linux-image-amd64", "linux-image-6.1.0-41-amd64"),
    ("linux-image-6.12-amd64", "linux-image-6.12.118+deb12-amd64"),
    ("linux-image-6.1.0-41-amd64", "linux-image-6.1.0-41-amd64"),
    ("linux-image-6.12.118+deb12-amd64", "linux-image-6.12.118+deb12-amd64"),
])
def test_meta_packages_resolve_to_their_image(apt_cache, package, image):
    assert guest._resolve_kernel_package(package) == image
