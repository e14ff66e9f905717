"""The vhost-user backend descriptor (QEMU's docs/interop/vhost-user.json) that lets libvirt
discover fastvfs: a JSON file in ``/usr/share/qemu/vhost-user/`` (or ``/etc/qemu/vhost-user/``)
naming the binary; libvirt then asks that binary for ``--print-capabilities``.

    fastvfs descriptor                       print the descriptor for this installation
    fastvfs descriptor --install [DIR]       write DIR/90-fastvfs.json (default /etc/qemu/vhost-user)

libvirt reads the descriptors of every directory in the order of their file names and takes the
first of the wanted type: the name sorts after the distribution's own (``50-qemu-virtiofsd.json``),
so installing it never takes over domains that name no binary.  A domain picks fastvfs with
``<binary path='.../fastvfs'>``; the descriptor serves hosts without another virtio-fs backend.
"""

import argparse
import json
import os
import shutil
import sys

DEFAULT_DIR = "/etc/qemu/vhost-user"
FILE_NAME = "90-fastvfs.json"


def binary_path():
    """The ``fastvfs`` console script beside this interpreter, else the one on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "fastvfs")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("fastvfs") or candidate


def descriptor(binary=None):
    return {"description": "fastvfs: virtio-fs vhost-user backend", "type": "fs",
            "binary": binary or binary_path()}


def descriptor_main(argv):
    p = argparse.ArgumentParser(prog="fastvfs descriptor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", help="path of the fastvfs executable to name")
    p.add_argument("--install", nargs="?", const=DEFAULT_DIR, metavar="DIR",
                   help=f"write {FILE_NAME} into DIR (default {DEFAULT_DIR})")
    args = p.parse_args(argv)
    text = json.dumps(descriptor(args.binary), indent=2) + "\n"
    if args.install:
        os.makedirs(args.install, exist_ok=True)
        path = os.path.join(args.install, FILE_NAME)
        with open(path, "w") as f:
            f.write(text)
        print(path)
    else:
        sys.stdout.write(text)
    return 0
