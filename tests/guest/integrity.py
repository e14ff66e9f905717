"""Write-heavy data-integrity check: random writes, truncates, reads, fsyncs and reopenings
on a few files, each checked against an in-memory model of what the file must hold.

Usage: integrity.py DIR [OPERATIONS [SEED]]  -- prints a JSON summary; exits 1 on the first
mismatch, saying which operation saw it.  Standard library only (runs in the guest).
"""

import hashlib
import json
import os
import random
import sys

MAX_SIZE = 4 << 20
FILES = 4


class Model:
    def __init__(self, path):
        self.path = path
        self.data = bytearray()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, rng):
        offset = rng.randrange(0, MAX_SIZE)
        length = rng.choice((1, 17, 512, 4096, 4097, 65536, 300000))
        length = min(length, MAX_SIZE - offset)
        chunk = rng.randbytes(length)
        assert os.pwrite(self.fd, chunk, offset) == length
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + length] = chunk

    def truncate(self, rng):
        size = rng.choice((0, rng.randrange(0, MAX_SIZE), len(self.data) // 2,
                           len(self.data) + rng.randrange(1, 100000)))
        os.ftruncate(self.fd, size)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def read(self, rng):
        if not self.data:
            return os.pread(self.fd, 100, 0) == b""
        offset = rng.randrange(0, len(self.data))
        length = rng.choice((1, 4096, 70000, len(self.data)))
        return os.pread(self.fd, length, offset) == bytes(self.data[offset:offset + length])

    def reopen(self, rng):
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)
        return self.whole()

    def whole(self):
        size = os.fstat(self.fd).st_size
        if size != len(self.data):
            return False
        content = b""
        while len(content) < size:
            piece = os.pread(self.fd, size - len(content), len(content))
            if not piece:
                return False
            content += piece
        return content == self.data


def run(directory, operations=3000, seed=1234):
    rng = random.Random(seed)
    models = [Model(os.path.join(directory, f"integrity{i}")) for i in range(FILES)]
    counts = {}
    for step in range(operations):
        model = rng.choice(models)
        op = rng.choices(("write", "truncate", "read", "fsync", "reopen"), (60, 8, 25, 5, 2))[0]
        counts[op] = counts.get(op, 0) + 1
        if op == "write":
            model.write(rng)
        elif op == "truncate":
            model.truncate(rng)
        elif op == "fsync":
            os.fsync(model.fd)
        elif not getattr(model, op)(rng):
            return {"ok": False, "step": step, "op": op, "file": model.path, "counts": counts}
    for model in models:
        os.fsync(model.fd)
        if not model.reopen(rng):
            return {"ok": False, "step": "final", "file": model.path, "counts": counts}
        os.close(model.fd)
    return {"ok": True, "counts": counts,
            "sha256": {os.path.basename(m.path): hashlib.sha256(m.data).hexdigest()
                       for m in models}}


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    result = run(argv[1], *(int(a) for a in argv[2:4]))
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
