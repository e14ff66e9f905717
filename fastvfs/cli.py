"""Command line, with the reference daemon's option names."""

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


def parser():
    p = argparse.ArgumentParser(prog="fastvfs", description="virtio-fs vhost-user backend")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket-path", help="vhost-user Unix socket to create and listen on")
    where.add_argument("--fd", type=int, help="an already listening socket inherited as fd N")
    p.add_argument("--shared-dir", help="directory to share with the guest")
    p.add_argument("--cache", default="auto",
                   choices=["never", "none", "auto", "metadata", "always"],
                   help="guest caching: never (coherent), auto (1 s, close-to-open), "
                        "metadata (metadata cached, data not), always (single writer)")
    p.add_argument("--writeback", action="store_true",
                   help="let the guest cache writes (FUSE_WRITEBACK_CACHE)")
    p.add_argument("--allow-direct-io", action="store_true",
                   help="honour the guest's O_DIRECT on the host")
    p.add_argument("--no-readdirplus", action="store_true",
                   help="do not offer READDIRPLUS (listings then carry no attributes)")
    p.add_argument("--xattr", action=argparse.BooleanOptionalAction, default=False,
                   help="serve extended attributes (default off)")
    p.add_argument("--xattrmap", metavar="RULES",
                   help="map extended attribute names between guest and host "
                        "(rules ':type:scope:key:prepend:'; implies --xattr)")
    p.add_argument("--posix-acl", action="store_true",
                   help="POSIX ACLs: the guest enforces them, the host applies default ACLs and "
                        "the caller's umask at creation (implies --xattr)")
    p.add_argument("--posix-lock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve POSIX record locks as host OFD locks (default on)")
    p.add_argument("--flock", action=argparse.BooleanOptionalAction, default=True,
                   help="serve flock() locks on the host (default on)")
    p.add_argument("--request-queues", type=int, default=16, metavar="N",
                   help="most request queues offered to the frontend (default 16)")
    p.add_argument("--rlimit-nofile", type=int, default=1_000_000, metavar="N",
                   help="raise the open-file limit to N (default 1000000, capped by the system)")
    p.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    p.add_argument("--print-capabilities", action="store_true",
                   help="print the vhost-user backend capabilities as JSON and exit")
    p.add_argument("-V", "--version", action="version", version=f"fastvfs {__version__}")
    return p


def main(argv=None):
    p = parser()
    options = p.parse_args(argv)
    if options.print_capabilities:
        print(json.dumps({"type": "fs"}, indent=2))
        return 0
    if options.socket_path is None and options.fd is None:
        p.error("one of --socket-path or --fd is required")
    if not options.shared_dir:
        p.error("--shared-dir is required")
    if not os.path.isdir(options.shared_dir):
        p.error(f"--shared-dir {options.shared_dir!r} is not a directory")
    if not 1 <= options.request_queues <= 254:
        p.error("--request-queues must be between 1 and 254")
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
    from .daemon import run
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
