"""Command line, with the reference daemon's option names.

    fastvfs --socket-path PATH --shared-dir DIR [options]   serve a VMM over vhost-user
    fastvfs mount SHARED_DIR MOUNTPOINT [options]           serve the host kernel (/dev/fuse)
"""

import argparse
import json
import logging
import os
import sys

from . import __version__

# The reference daemons' spellings: trace/debug/info/warn/error/off, and err.
LOG_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
              "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
              "err": logging.ERROR, "off": logging.CRITICAL + 1}


def add_fs_options(p):
    """Options of the file system and the FUSE session, the same for every transport."""
    p.add_argument("--cache", default="auto",
                   choices=["never", "none", "auto", "metadata", "always"],
                   help="client caching: never (coherent), auto (1 s, close-to-open), "
                        "metadata (metadata cached, data not), always (single writer)")
    p.add_argument("--writeback", action="store_true",
                   help="let the client cache writes (FUSE_WRITEBACK_CACHE)")
    p.add_argument("--allow-direct-io", action="store_true",
                   help="honour the client's O_DIRECT on the host")
    p.add_argument("--no-readdirplus", action="store_true",
                   help="do not offer READDIRPLUS (listings then carry no attributes)")
    p.add_argument("--xattr", action=argparse.BooleanOptionalAction, default=False,
                   help="serve extended attributes (default off)")
    p.add_argument("--xattrmap", metavar="RULES",
                   help="map extended attribute names between client and host "
                        "(rules ':type:scope:key:prepend:'; implies --xattr)")
    p.add_argument("--posix-acl", action="store_true",
                   help="POSIX ACLs: the client enforces them, the host applies default ACLs "
                        "and the caller's umask at creation (implies --xattr)")
    p.add_argument("--posix-lock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve POSIX record locks as host OFD locks (default on)")
    p.add_argument("--flock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve flock() locks on the host (default on)")
    p.add_argument("--rlimit-nofile", type=int, default=1_000_000, metavar="N",
                   help="raise the open-file limit to N (default 1000000, capped by the system)")
    p.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    p.add_argument("-V", "--version", action="version", version=f"fastvfs {__version__}")


def parser():
    p = argparse.ArgumentParser(prog="fastvfs", description="virtio-fs vhost-user backend "
                                "(or, as 'fastvfs mount SHARED_DIR MOUNTPOINT', a FUSE server "
                                "for the host kernel)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", help="vhost-user Unix socket to create and listen on")
    where.add_argument("--fd", type=int, help="an already listening socket inherited as fd N")
    p.add_argument("--shared-dir", help="directory to share with the guest")
    p.add_argument("--request-queues", type=int, default=16, metavar="N",
                   help="most request queues offered to the frontend (default 16)")
    p.add_argument("--dax-window-size", type=parse_size, default=0, metavar="SIZE",
                   help="offer a DAX cache window of SIZE bytes (suffixes K, M, G; e.g. 8G) to "
                        "frontends that support VIRTIO shared memory (default: none)")
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user backend capabilities as JSON and exit")
    add_fs_options(p)
    return p


def parse_size(text):
    """'8G', '512M', '4096', '2MiB' -> bytes; a positive multiple of 4 KiB or 0."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = int(t[:len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value < 0 or value % 4096:
        raise argparse.ArgumentTypeError(f"size {text!r} is not a multiple of 4 KiB")
    return value


def mount_parser():
    p = argparse.ArgumentParser(prog="fastvfs mount",
                                description="serve SHARED_DIR at MOUNTPOINT through /dev/fuse")
    p.add_argument("shared_dir", metavar="SHARED_DIR")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--threads", type=int, default=4, help="request reader threads (default 4)")
    add_fs_options(p)
    return p


def _finish_fs_options(p, options):
    if not os.path.isdir(options.shared_dir):
        p.error(f"shared directory {options.shared_dir!r} is not a directory")
    if options.posix_acl:
        options.xattr = True
    if options.xattrmap is not None:
        from .fs.xattrmap import XattrMap
        try:
            options.xattrmap = XattrMap(options.xattrmap)
        except ValueError as exc:
            p.error(str(exc))
        options.xattr = True
    logging.basicConfig(level=LOG_LEVELS[options.log_level], stream=sys.stderr,
                        format="fastvfs[%(process)d] %(levelname)s %(name)s: %(message)s")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "mount":
        p = mount_parser()
        options = p.parse_args(argv[1:])
        if not os.path.isdir(options.mountpoint):
            p.error(f"mount point {options.mountpoint!r} is not a directory")
        if options.threads < 1:
            p.error("--threads must be at least 1")
        _finish_fs_options(p, options)
        from .daemon import run_mount
        return run_mount(options)
    p = parser()
    options = p.parse_args(argv)
    if options.print_capabilities:
        print(json.dumps({"type": "fs"}, indent=2))
        return 0
    if options.socket_path is None and options.fd is None:
        p.error("one of --socket-path or --fd is required")
    if not options.shared_dir:
        p.error("--shared-dir is required")
    if not 1 <= options.request_queues <= 254:
        p.error("--request-queues must be between 1 and 254")
    _finish_fs_options(p, options)
    from .daemon import run
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
