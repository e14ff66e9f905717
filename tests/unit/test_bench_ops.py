"""The pure parts of the every-opcode benchmark (bench/ops.py): the backend CPU accounting it
relies on, the closed-loop cycle driver, combining rounds, ratios and the table."""

import dataclasses
import errno
import os
import re
import subprocess
import sys
import textwrap

import pytest

from bench import micro, ops
from fastvfs.fuse import abi
from fastvfs.fuse.abi import Opcode
from fastvfs_testing.fuse_client import Reply


def test_backend_cpu_counts_the_serving_child():
    # Both daemons serve from a process they fork: the CPU a grandchild burns must be counted
    # against the started process.
    script = textwrap.dedent("""
        import os, sys, time
        r, w = os.pipe()
        if os.fork() == 0:
            while time.thread_time() < 0.3:
                pass
            os.write(w, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(r, 1)
        print("burnt", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "burnt"
        own = int(open(f"/proc/{proc.pid}/schedstat").read().split()[0]) / 1e9
        total = micro.cpu_seconds(proc.pid)
        assert total >= 0.3
        assert total - own >= 0.25
    finally:
        for pid in micro.family(proc.pid) - {proc.pid}:
            os.kill(pid, 9)
        proc.kill()
        proc.wait()


def test_backend_cpu_counts_threads_that_have_exited():
    # io_uring's io-wq workers (FSYNC, FALLOCATE) exit when idle, within a run: their time
    # must stay counted, as it does in the accounting group ``spawn`` starts a backend in, and
    # as the live threads' sum cannot (the control).  A forked child burns too, counted alike.
    group = micro._new_cgroup()
    if group is None:
        pytest.skip("no CPU accounting cgroup can be made here")
    os.rmdir(group[0])
    script = textwrap.dedent("""
        import os, threading, time
        def burn():
            while time.thread_time() < 0.3:
                pass
        t = threading.Thread(target=burn)
        t.start()
        t.join()
        if os.fork() == 0:
            burn()
            os._exit(0)
        os.wait()
        print("burnt", flush=True)
        time.sleep(30)
    """)
    proc = micro.spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "burnt"
        assert micro.live_thread_seconds(proc.pid) < 0.2
        assert micro.cpu_seconds(proc.pid) >= 0.55
    finally:
        proc.kill()
        proc.wait()
        micro.reap(proc)
    assert proc.pid not in micro._cgroups


class FakeQueue:
    def kick(self):
        pass


class FakeFrontend:
    queues = [FakeQueue(), FakeQueue()]


class FakeClient:
    """Answers every request at once with ``answer(opcode)`` as the error."""

    def __init__(self, answer=lambda opcode: 0):
        self.frontend = FakeFrontend()
        self.answer = answer
        self.pending = {}
        self.next = 2
        self.max_in_flight = 0
        self.opcodes = []

    def submit(self, opcode, nodeid=0, body=b"", **kw):
        ticket, self.next = self.next, self.next + 2
        self.pending[ticket] = opcode
        self.opcodes.append(opcode)
        self.max_in_flight = max(self.max_in_flight, len(self.pending))
        self.frontend.queues[1].kick()
        return ticket

    def collect(self):
        """The oldest request's reply."""
        ticket = next(iter(self.pending))
        return [(ticket, Reply(ticket, self.answer(self.pending.pop(ticket)), bytes(256)))]

    def wait_all(self):
        done = {t: Reply(t, self.answer(op)) for t, op in self.pending.items()}
        self.pending.clear()
        return done


class Ctx:
    node = {"w": 5, "plain": 6, "data": 7, "copy": 8}
    fh = {"data": 1, "copy": 2}
    slot_file = [(100 + i, 300 + i) for i in range(ops.SLOTS)]
    slot_dir = [(200 + i, 400 + i) for i in range(ops.SLOTS)]
    slot_attr = [500 + i for i in range(ops.SLOTS)]
    slot_copy = [(600 + i, 700 + i) for i in range(ops.SLOTS)]
    payload = bytes(4096)


def test_drive_runs_whole_cycles_at_the_depth_and_counts_kicks():
    client = FakeClient()
    r = ops.drive(client, ops.BY_NAME["mkdir"], Ctx(), 4, 0.05)
    assert client.max_in_flight == 4
    assert r["cycles"] > 4 and r["requests"] == 3 * r["cycles"] == r["kicks"]
    # Every started cycle ran to its end: no MKDIR without its RMDIR and FORGET.
    assert client.opcodes.count(Opcode.MKDIR) == client.opcodes.count(Opcode.RMDIR) \
        == client.opcodes.count(Opcode.FORGET) == r["cycles"]
    assert FakeQueue.kick is client.frontend.queues[1].kick.__func__


class NodeClient(FakeClient):
    """Answers the oldest request first and counts the requests in flight per node."""

    def __init__(self):
        super().__init__()
        self.node_of, self.most_per_node = {}, 0

    def submit(self, opcode, nodeid=0, body=b"", **kw):
        ticket = super().submit(opcode, nodeid, body, **kw)
        self.node_of[ticket] = nodeid
        self.most_per_node = max(self.most_per_node,
                                 list(self.node_of.values()).count(nodeid))
        return ticket

    def collect(self):
        done = super().collect()
        for ticket, _ in done:
            del self.node_of[ticket]
        return done


@pytest.mark.parametrize("name", ["fsync", "fsyncdir", "write_fsync", "fallocate",
                                  "setattr_mode", "setattr_owner", "setattr_size",
                                  "setattr_times"])
def test_locked_requests_in_flight_together_are_of_different_inodes(name):
    """A Linux guest holds the inode's lock through its FSYNC, FSYNCDIR, FALLOCATE and SETATTR
    (fuse_fsync, fuse_dir_fsync, fuse_file_fallocate, notify_change's callers): the driver
    never has two of these in flight for one inode, whatever the depth."""
    client = NodeClient()
    r = ops.drive(client, ops.BY_NAME[name], Ctx(), ops.SLOTS, 0.02)
    assert client.max_in_flight == ops.SLOTS and r["requests"] > ops.SLOTS
    assert client.most_per_node == 1


class FullCtx(Ctx):
    """Every node and handle a workload names."""
    node = {n: 10 + i for i, n in enumerate(("data", "small", "plain", "sym", "dir", "w", "n"))}
    fh = {"data": 1, "plain": 3, "dir": 4}
    setxattr_ext = False
    payload = bytes(1 << 20)


def _requests_per_cycle(workload):
    """How many requests one cycle of ``workload`` sends, every reply a success."""
    gen, n = workload.run(FullCtx(), 0, 0), 0
    reply = None
    while True:
        try:
            req = gen.send(reply)
        except StopIteration:
            return n
        n += 1
        # A success of the size asked for (an empty listing: no entries).
        reply = Reply(0, 0, bytes(req.kw.get("reply_len", 0)))


# The workloads the C driver cannot run: what each sends depends on more than the node ids
# and handles earlier replies gave (the size alternates; the listing's contents decide the
# next offset and what is forgotten).
NO_C_FORM = {"setattr_size", "list", "list_new"}


def test_the_c_driver_runs_every_workload_it_can():
    """Every workload of one request per cycle has a form for the C driver, its own (LOOKUP,
    GETATTR, READ, WRITE at random offsets) or RAW, and every cycle of several its CYCLE form,
    but those of ``NO_C_FORM``, which refuse it."""
    own = {"lookup_hit", "getattr"} | {w.name for w in ops.WORKLOADS
                                       if re.fullmatch(r"(read|write)\d+[km]", w.name)}
    for w in ops.WORKLOADS:
        single = _requests_per_cycle(w) == 1
        if w.name in NO_C_FORM:
            assert not w.lean, w.name
            with pytest.raises(ValueError):
                ops.cycle_program(dataclasses.replace(w, lean=ops.CYCLE), FullCtx(), 0)
        elif not single:
            assert w.lean == ops.CYCLE, w.name
        elif w.name in own:
            assert w.lean and w.lean[0] in ("LOOKUP", "GETATTR", "READ", "WRITE"), w.name
        else:
            assert w.lean == ops.RAW, w.name


@pytest.mark.parametrize("w", [w for w in ops.WORKLOADS if w.lean == ops.RAW],
                         ids=lambda w: w.name)
def test_raw_requests_are_each_slots_request(w):
    requests, ok_error = ops.raw_requests(w, FullCtx(), ops.SLOTS)
    assert len(requests) == ops.SLOTS
    for slot, (opcode, nodeid, body, reply_len, data_len) in enumerate(requests):
        req = next(w.run(FullCtx(), slot, slot))
        assert (opcode, nodeid, body) == (req.opcode, req.nodeid, req.body)
        assert (reply_len, data_len) == (req.kw.get("reply_len", 0), req.kw.get("data_len", 0))
        assert ok_error == -req.ok[0]
    expected = {"lookup_miss": -errno.ENOENT, "getxattr_miss": -errno.ENODATA,
                "ioctl": -errno.ENOSYS}
    assert ok_error == expected.get(w.name, 0)


@pytest.mark.parametrize("w", [w for w in ops.WORKLOADS if w.lean == ops.CYCLE],
                         ids=lambda w: w.name)
@pytest.mark.parametrize("slot", [0, 5])
def test_cycle_programs_send_what_the_workload_sends(w, slot):
    """Run as the C driver runs it (each step's patches filled in from the replies before
    it), a cycle's program sends byte for byte what the workload's generator sends given the
    same replies: random ones, so every node id and handle taken from a reply is checked."""
    import random
    rng = random.Random(slot)
    program = ops.cycle_program(w, FullCtx(), slot)
    gen, reply, replies = w.run(FullCtx(), slot, 7), None, []
    for step, (opcode, nodeid, body, data, reply_len, data_len, noreply, patches) in \
            enumerate(program):
        req = gen.send(reply)
        sent = bytearray(abi.in_header.pack(0, opcode, 0, nodeid, 0, 0, 0, 0, 0) + body)
        for src, offset, pos in patches:
            sent[pos:pos + 8] = replies[src][offset:offset + 8]
        assert (req.opcode, req.nodeid, req.body) == \
            (opcode, abi.in_header.unpack_from(sent)[3], bytes(sent[abi.IN_HEADER_SIZE:]))
        assert (req.kw.get("data", b""), req.kw.get("reply_len", 0), req.kw.get("data_len", 0),
                bool(req.kw.get("noreply"))) == (data, reply_len, data_len, noreply)
        replies.append(rng.randbytes(reply_len))
        reply = Reply(0, 0, replies[-1], bytes(data_len))
    with pytest.raises(StopIteration):
        gen.send(reply)


def test_a_cycle_program_takes_the_node_and_handle_a_create_gave():
    program = ops.cycle_program(ops.BY_NAME["create"], FullCtx(), 3)
    assert [step[0] for step in program] == [Opcode.CREATE, Opcode.RELEASE, Opcode.UNLINK,
                                             Opcode.FORGET]
    nodeid_at, fh_at = 16, abi.IN_HEADER_SIZE
    assert [step[7] for step in program] == [
        [], [(0, 0, nodeid_at), (0, abi.ENTRY_OUT_SIZE, fh_at)], [], [(0, 0, nodeid_at)]]
    assert [step[6] for step in program] == [False, False, False, True]
    with pytest.raises(ValueError):
        ops.cycle_program(ops.BY_NAME["statfs"], FullCtx(), 0)


@pytest.mark.parametrize("name", ["create", "open_release", "setattr_size", "write4k"])
def test_raw_requests_refuse_what_has_no_raw_form(name):
    with pytest.raises(ValueError):
        ops.raw_requests(ops.BY_NAME[name], FullCtx(), 1)


def test_drive_expects_the_miss_and_reports_not_implemented():
    r = ops.drive(FakeClient(lambda op: errno.ENOENT), ops.BY_NAME["lookup_miss"], Ctx(), 1, 0.01)
    assert r["requests"] == r["cycles"] > 0
    with pytest.raises(OSError):
        ops.drive(FakeClient(lambda op: errno.ENOENT), ops.BY_NAME["lookup_hit"], Ctx(), 1, 0.01)
    client = FakeClient(lambda op: errno.ENOSYS)
    with pytest.raises(ops.NotImplementedByBackend):
        ops.drive(client, ops.BY_NAME["copy_file_range"], Ctx(), 4, 0.01)
    # The other requests in flight were collected: the next workload starts on an idle queue.
    assert not client.pending


def _round(requests, cycles, wall, backend, driver=0.5, kicks=None):
    return {"requests": requests, "cycles": cycles, "wall_s": wall, "backend_cpu_s": backend,
            "driver_cpu_s": driver, "kicks": requests if kicks is None else kicks}


def test_summarise_weighs_rounds_by_their_counts():
    s = ops.summarise([_round(1000, 250, 1.0, 0.02), _round(3000, 750, 2.0, 0.06, 1.5, 300)])
    assert s["req_per_s"] == pytest.approx(4000 / 3.0)
    assert s["cycles_per_s"] == pytest.approx(1000 / 3.0)
    assert s["backend_us_per_req"] == pytest.approx(0.08e6 / 4000)
    assert s["backend_us_per_cycle"] == pytest.approx(0.08e6 / 1000)
    assert s["driver_cpu_share"] == pytest.approx(2.0 / 3.0)
    assert s["kicks_per_req"] == pytest.approx(1300 / 4000)
    assert s["rounds_req_per_s"] == [1000, 1500]


def test_ratios_per_request_and_per_cycle():
    f = ops.summarise([_round(2000, 500, 1.0, 0.01)])
    r = ops.summarise([_round(1000, 500, 1.0, 0.02)])
    per_req = ops.compare(f, r, per_cycle=False)
    assert per_req["rate"] == pytest.approx(2.0) and per_req["cpu"] == pytest.approx(0.25)
    per_cycle = ops.compare(f, r, per_cycle=True)
    assert per_cycle["rate"] == pytest.approx(1.0) and per_cycle["cpu"] == pytest.approx(0.5)
    assert ops.ratio(None, 1.0) is None and ops.ratio(1.0, 0) is None


def test_table_shows_cycles_ratios_and_not_implemented():
    f = ops.summarise([_round(4000, 1000, 1.0, 0.1)])
    r = ops.summarise([_round(2000, 500, 1.0, 0.1)])
    results = {
        "create@1/python": {"workload": "create", "depth": 1, "driver": "python",
                            "unit": "CREATE+RELEASE+UNLINK+FORGET", "fastvfs": f,
                            "reference": r},
        "copy_file_range@1/python": {"workload": "copy_file_range", "depth": 1,
                                     "driver": "python", "unit": "request",
                                     "fastvfs": {"not_implemented": "Function not implemented"},
                                     "reference": r},
    }
    config = {"date": "D", "machine": "M", "commit": "abc", "fastvfs_argv": ["-m", "fastvfs"],
              "reference_argv": ["virtiofsd"], "fastvfs_sandbox": "namespace",
              "reference_sandbox": "namespace", "fastvfs_threads": "t",
              "reference_threads": "t", "cache": "auto", "tree_fs": "ext4", "rounds": 2,
              "seconds": 1, "driver": "python"}
    text = ops.markdown(results, config)
    create = next(line for line in text.splitlines() if line.startswith("| create"))
    cells = [c.strip() for c in create.strip("|").split("|")]
    assert cells[3] == "cycle (CREATE+RELEASE+UNLINK+FORGET)"
    assert cells[4:7] == ["1,000", "500", "2.00x"]
    assert cells[7:10] == ["100.0", "200.0", "0.50x"]
    assert cells[10] == "50% / 50%"
    copy = next(line for line in text.splitlines() if line.startswith("| copy_file_range"))
    assert "not implemented" in copy and "2,000" in copy
    assert "cache mode: auto" in text and "Commit abc" in text


def test_gate_ratios_are_units_per_backend_cpu_second():
    f = ops.summarise([_round(4000, 1000, 1.0, 0.1)])
    r = ops.summarise([_round(2000, 500, 1.0, 0.1)])
    results = {
        "create@1/python": {"workload": "create", "depth": 1, "driver": "python",
                            "unit": "CREATE+RELEASE+UNLINK+FORGET", "fastvfs": f,
                            "reference": r},
        "getattr@1/lean": {"workload": "getattr", "depth": 1, "driver": "lean",
                           "unit": "request", "fastvfs": f, "reference": r},
        "copy_file_range@1/python": {"workload": "copy_file_range", "depth": 1,
                                     "driver": "python", "unit": "request",
                                     "fastvfs": {"not_implemented": "ENOSYS"}, "reference": r},
    }
    # fastvfs does a cycle on half the reference's CPU: twice the cycles per CPU-second.
    assert ops.gate_ratios(results) == {"ops:create@1": pytest.approx(2.0)}


def test_options_added_to_fastvfs_only():
    """``--fastvfs-arg`` (bench.ops and bench.footprint) reaches fastvfs's command line, after
    its own options, and never the reference's."""
    from bench import footprint
    extra = ("--inode-file-handles=prefer", "--thread-pool-size=1")
    assert ops.backend_argv("fastvfs", "S", "D", "auto", extra)[-2:] == list(extra)
    assert not set(extra) & set(ops.backend_argv("reference", "S", "D", "auto", extra))
    assert footprint.argv_of("fastvfs", "/bin/fastvfs", "S", "D", extra)[-2:] == list(extra)
    assert not set(extra) & set(footprint.argv_of("reference", None, "S", "D", extra))


def test_guest_mix_table():
    """The guest-mix report: opcodes by request count, the engine's share of the total."""
    from bench import guest_mix
    doc = {"total": 300, "total_engine": 3,
           "ops": {"IOCTL": {"count": 100, "engine": 0, "mean_us": 1.25},
                   "LOOKUP": {"count": 199, "engine": 2, "mean_us": 8.0},
                   "INIT": {"count": 1, "engine": 1, "mean_us": 500.0}}}
    text = guest_mix.markdown({"date": "d", "machine": "m", "commit": "c", "fastvfs_cmd": "f"},
                              doc)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| LOOKUP | 199 | 2 | 8.0 |", "| IOCTL | 100 | 0 | 1.2 |",
                        "| INIT | 1 | 1 | 500.0 |"]
    assert "300 requests, 3 answered by the Python engine (1.00%)" in text
