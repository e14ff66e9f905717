"""Each layer imports only the layers below it (README, "Layout").

Top to bottom: cli/daemon (wiring) -> vhost_user (control plane) -> ring (hot path) and
fuse (FUSE engine) -> uring (io_uring engine), fs (file system backend) and dax (cache window).
The ring may cimport one module of the file system, its C face (``fs._tables``: the handle
and node id tables and the helpers both sides serve requests with), and nothing else of it.
``config`` (the typed options) is a leaf every layer may import; it imports nothing of fastvfs.
``includes`` holds the C declarations (one ``.pxd`` per C header) and imports no layer.  Cython
sources (``.pyx``, ``.pxd``, ``.pxi``) are read for their ``import`` and ``cimport`` lines.
The harness (``fastvfs_testing``, outside the distributed package) is a client of all of them
and nothing in the product imports it.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fastvfs"

# layer -> layers it must not import
FORBIDDEN = {
    "fs": {"fuse", "vhost_user", "ring", "daemon", "cli", "testing"},
    "fuse": {"vhost_user", "ring", "daemon", "cli", "testing"},
    "ring": {"fuse", "fs", "vhost_user", "daemon", "cli", "testing"},
    "vhost_user": {"fuse", "fs", "daemon", "cli", "testing"},
    "uring": {"fuse", "fs", "vhost_user", "ring", "daemon", "cli", "testing"},
    "transport": {"vhost_user", "ring", "fs", "daemon", "cli", "testing"},
    "daemon": {"testing", "cli"},
    # The DAX window talks to an abstract map/unmap channel, never to FUSE or vhost-user.
    "dax": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
            "testing"},
    # Process confinement and statistics serve the daemon; they know no protocol layer.
    "sandbox": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
                "testing"},
    # The libseccomp binding knows nothing of the daemon (the allow-list is the sandbox's).
    "seccomp": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
                "testing", "dax", "sandbox", "stats", "procfd"},
    "procfd": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
               "testing", "dax", "sandbox", "stats"},
    "stats": {"fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli", "testing"},
    # C declarations only: nothing of fastvfs above them.
    "includes": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
                 "testing", "dax", "sandbox", "stats", "procfd", "seccomp", "config"},
    # Typed configuration: a leaf every layer may import, importing nothing of fastvfs.
    "config": {"fuse", "fs", "vhost_user", "ring", "uring", "transport", "daemon", "cli",
               "testing", "dax", "sandbox", "stats", "procfd", "seccomp", "includes",
               "descriptor", "__init__", "__main__"},
}

# The file system's C face: a layer of its own for this check, forbidden wherever ``fs`` is
# except in the ring.
C_FACE = "fs._tables"
for _layer, _forbidden in FORBIDDEN.items():
    if "fs" in _forbidden and _layer != "ring":
        _forbidden.add(C_FACE)

CYTHON = (".pyx", ".pxd", ".pxi")


def layer_of(path):
    rel = path.relative_to(PACKAGE)
    name = rel.parts[0]
    for suffix in (".py",) + CYTHON:
        name = name.removesuffix(suffix)
    return name


def imported_layers(path):
    tree = ast.parse(path.read_text()) if path.suffix == ".py" else None
    names = set()
    if tree is None:
        # Cython sources: look at plain import and cimport lines only.
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from", "cimport"):
                names.add(words[1])
    else:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                sep = "" if base.endswith(".") else "."
                names.add(base)
                names.update(base + sep + alias.name for alias in node.names)
    layers = set()
    own = layer_of(path)
    for name in names:
        if name == "fastvfs." + C_FACE or name.startswith("fastvfs." + C_FACE + "."):
            layers.add(C_FACE)
        elif name.startswith("fastvfs."):
            layers.add(name.split(".")[1])
        elif name.startswith(".."):
            layers.add(name.lstrip(".").split(".")[0])
        elif name.startswith(".") and own in ("cli", "daemon", "config", "__main__", "__init__"):
            layers.add(name.lstrip(".").split(".")[0])
    return {layer for layer in layers if layer}


SOURCES = sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py",) + CYTHON)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    layer = layer_of(path)
    bad = imported_layers(path) & FORBIDDEN.get(layer, set())
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_product_never_imports_the_harness(path):
    text = path.read_text()
    assert "fastvfs_testing" not in text, f"{path.relative_to(PACKAGE)} imports the harness"


def test_the_check_sees_imports():
    # Guard against a checker that finds nothing: the daemon wires every layer.
    assert {"fs", "fuse", "vhost_user", "ring"} <= imported_layers(PACKAGE / "daemon.py")


def test_config_is_a_leaf():
    # Every layer may import the typed options, so they import nothing of fastvfs.
    assert imported_layers(PACKAGE / "config.py") == set()


def test_the_check_sees_cimports():
    assert {"includes", C_FACE} <= imported_layers(PACKAGE / "ring" / "_ring.pyx")
    assert C_FACE in imported_layers(PACKAGE / "ring" / "_ring.pxd")


def test_the_ring_reaches_the_file_system_only_through_its_c_face():
    assert "fs" not in imported_layers(PACKAGE / "ring" / "_ring.pyx")
    assert "fs" in FORBIDDEN["ring"] and C_FACE not in FORBIDDEN["ring"]


@pytest.mark.parametrize("path", [p for p in SOURCES if p.suffix in CYTHON],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_c_declarations_live_in_includes(path):
    # Every C declaration is in fastvfs/includes/, one .pxd per header, declared once.
    if layer_of(path) == "includes":
        return
    lines = [line for line in path.read_text().splitlines() if line.startswith("cdef extern")]
    assert not lines, f"{path.relative_to(PACKAGE)} declares C outside includes/: {lines}"
