"""The directory tree the FUSE harness and its seed generator serve, and the framing of a fuzz
input as a sequence of FUSE requests (shared by fuzz/fuzz_fuse_engine.py and
fuzz/make_seeds.py).

An input is a sequence of records ``[u32 out_size][u16 length][length bytes]`` (little endian),
each one request handed to ``FuseEngine.handle(request, out_size)``; a short tail is one last
record of whatever is left."""

import os
import struct

record = struct.Struct("<IH")
MAX_REQUESTS = 12
MAX_OUT = 1 << 20


def make_tree(outer):
    """``outer/share`` (the shared directory) and ``outer/outside`` (a file the engine must
    never touch: two symbolic links in the share point at it)."""
    root = os.path.join(outer, "share")
    os.mkdir(root)
    os.mkdir(os.path.join(root, "sub"))
    with open(os.path.join(root, "f"), "wb") as f:
        f.write(b"data" * 100)
    with open(os.path.join(root, "sub", "g"), "wb") as f:
        f.write(b"g" * 10)
    os.symlink("../outside", os.path.join(root, "up"))
    os.symlink(os.path.join(outer, "outside"), os.path.join(root, "abs"))
    os.mkfifo(os.path.join(root, "fifo"))
    with open(os.path.join(outer, "outside"), "wb") as f:
        f.write(b"outside the share\n")
    return root


def frame(requests):
    """Encode ``[(request bytes, out_size)]`` as one input."""
    return b"".join(record.pack(out, len(req)) + req for req, out in requests)


def unframe(data):
    """Decode an input into at most MAX_REQUESTS ``(request, out_size)``."""
    out, pos = [], 0
    while pos < len(data) and len(out) < MAX_REQUESTS:
        if len(data) - pos < record.size:
            out.append((data[pos:], 4096))
            break
        out_size, length = record.unpack_from(data, pos)
        pos += record.size
        out.append((data[pos:pos + length], out_size % (MAX_OUT + 1)))
        pos += length
    return out
