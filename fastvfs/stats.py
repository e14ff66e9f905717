"""Request statistics: the control socket behind ``fastvfs stats``, a Prometheus endpoint and a
periodic log line.

The hot path counts every request it answers in a :class:`fastvfs.ring.RequestStats` (per
opcode: count, errors, total latency and a log2 latency histogram, from the moment the request
is taken off the ring to the moment its reply is in the used ring, and how many of them the
Python engine answered rather than the C hot path).  This module only reads
those counters:

- the **control socket** (``--stats-socket``, by default ``SOCKET_PATH.stats``) answers one
  command per connection: ``json`` (the default) or ``prometheus``;
- the **metrics endpoint**, an HTTP server (the standard library's ``http.server`` request
  handler) on a Unix socket (``--metrics-socket``, for ``curl --unix-socket PATH
  http://localhost/metrics`` or an agent's unix transport) and/or a TCP address
  (``--metrics-address HOST:PORT``, for a Prometheus scraper): ``GET /metrics`` answers the text
  exposition format, any other path 404, any other method 501;
- ``--metrics-interval SECONDS`` logs the requests and mean latencies of the last interval.

``fastvfs stats [--socket-path P | --stats-socket P] [--watch SECONDS] [--json]`` prints the
table from a running daemon.
"""

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time

from .fuse.abi import Opcode
from .sandbox import host_pid

log = logging.getLogger("fastvfs.stats")
STATS_SUFFIX = ".stats"


def opcode_name(op):
    try:
        return Opcode(op).name
    except ValueError:
        return "OTHER" if op == 0 else f"OP{op}"


def percentile(hist, q):
    """Upper bound (ns) of the log2 bucket holding the ``q`` quantile."""
    total = sum(hist)
    if not total:
        return 0
    target = q * total
    seen = 0
    for bucket, n in enumerate(hist):
        seen += n
        if seen >= target:
            return 2 ** (bucket + 1)
    return 2 ** len(hist)


def summarize(snapshot, started=None):
    """The JSON document the control socket serves."""
    ops = {}
    for op, (count, errors, total_ns, hist, engine) in sorted(snapshot.items()):
        ops[opcode_name(op)] = {
            "opcode": op, "count": count, "errors": errors, "engine": engine,
            "mean_us": total_ns / count / 1000 if count else 0,
            # Quantiles as the upper bounds ("le", as Prometheus names bucket bounds) of the
            # log2 latency buckets holding them: the true value lies in (bound/2, bound].
            "p50_le_us": percentile(hist, 0.5) / 1000,
            "p99_le_us": percentile(hist, 0.99) / 1000,
            "histogram_log2_ns": hist}
    doc = {"pid": host_pid(), "time": time.time(), "ops": ops,
           "total": sum(v["count"] for v in ops.values()),
           "total_engine": sum(v["engine"] for v in ops.values())}
    if started is not None:
        doc["uptime_s"] = time.monotonic() - started
    return doc


def prometheus(snapshot):
    """Prometheus text exposition format: counters and a histogram per opcode."""
    lines = ["# HELP fastvfs_requests_total FUSE requests answered, by opcode.",
             "# TYPE fastvfs_requests_total counter"]
    for op, (count, *_) in sorted(snapshot.items()):
        lines.append(f'fastvfs_requests_total{{op="{opcode_name(op)}"}} {count}')
    lines += ["# HELP fastvfs_requests_engine_total FUSE requests answered by the Python engine "
              "rather than the C hot path, by opcode.",
              "# TYPE fastvfs_requests_engine_total counter"]
    for op, (*_, engine) in sorted(snapshot.items()):
        lines.append(f'fastvfs_requests_engine_total{{op="{opcode_name(op)}"}} {engine}')
    lines += ["# HELP fastvfs_request_errors_total FUSE requests answered with an error.",
              "# TYPE fastvfs_request_errors_total counter"]
    for op, (_, errors, *_) in sorted(snapshot.items()):
        lines.append(f'fastvfs_request_errors_total{{op="{opcode_name(op)}"}} {errors}')
    lines += ["# HELP fastvfs_request_duration_seconds Time from taking a request off the ring "
              "to its reply.", "# TYPE fastvfs_request_duration_seconds histogram"]
    for op, (count, _, total_ns, hist, _) in sorted(snapshot.items()):
        name = opcode_name(op)
        cumulative = 0
        for bucket, n in enumerate(hist):
            cumulative += n
            if n or bucket == len(hist) - 1:
                le = 2 ** (bucket + 1) / 1e9
                lines.append(f'fastvfs_request_duration_seconds_bucket{{op="{name}",'
                             f'le="{le:.9g}"}} {cumulative}')
        lines.append(f'fastvfs_request_duration_seconds_bucket{{op="{name}",le="+Inf"}} '
                     f'{count}')
        lines.append(f'fastvfs_request_duration_seconds_sum{{op="{name}"}} {total_ns / 1e9:.9f}')
        lines.append(f'fastvfs_request_duration_seconds_count{{op="{name}"}} {count}')
    return "\n".join(lines) + "\n"


class StatsServer:
    """Serves the counters on the control and metrics sockets, and the periodic log line.

    The sockets are bound (and listening) at construction, before the sandbox hides their
    paths; :meth:`start` runs the threads; :meth:`close` stops them and removes the files."""

    def __init__(self, stats, control_path=None, metrics_path=None, interval=0,
                 metrics_address=None):
        self.stats = stats
        self.started = time.monotonic()
        self.interval = interval
        self._stop = threading.Event()
        self._listeners = []
        self._threads = []
        if metrics_path or metrics_address:
            self._handler_class = _metrics_handler()
        for path, handler in ((control_path, self._control), (metrics_path, self._metrics)):
            if path:
                self._listeners.append((_bind(path), path, handler))
        # A TCP listener has no file to remove: its "path" is None.
        self._tcp = []
        if metrics_address:
            self._tcp.append((_bind_tcp(metrics_address), None, self._metrics))

    def start(self):
        for sock, path, handler in self._listeners + self._tcp:
            name = os.path.basename(path) if path else "metrics-tcp"
            t = threading.Thread(target=self._serve, args=(sock, handler),
                                 name=f"fastvfs-stats-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.interval > 0:
            t = threading.Thread(target=self._log_loop, name="fastvfs-metrics-log", daemon=True)
            t.start()
            self._threads.append(t)

    def detach(self):
        """Close the listening sockets without removing their files (another process, the
        sandbox's serving child, owns them)."""
        for sock, _, _ in self._listeners + self._tcp:
            sock.close()
        self._listeners = []
        self._tcp = []

    def close(self, unlink=None):
        """Stop serving; ``unlink(path)`` removes each socket file (the default: os.unlink)."""
        self._stop.set()
        for sock, path, _ in self._listeners + self._tcp:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            if path is None:
                continue
            try:
                (unlink or os.unlink)(path)
            except OSError:
                pass
        self._listeners = []
        self._tcp = []

    @property
    def paths(self):
        return [path for _, path, _ in self._listeners]

    def _serve(self, sock, handler):
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    handler(conn)
                except OSError:
                    pass

    def _control(self, conn):
        command = b""
        try:
            command = conn.recv(64).strip()
        except socket.timeout:
            pass
        snapshot = self.stats.snapshot()
        if command == b"prometheus":
            conn.sendall(prometheus(snapshot).encode())
        else:
            conn.sendall(json.dumps(summarize(snapshot, self.started)).encode())

    def _metrics(self, conn):
        # One request per connection (HTTP/1.0 semantics), parsed by http.server.
        self._handler_class(conn, ("", 0), self)

    def _log_loop(self):
        last = self.stats.snapshot()
        while not self._stop.wait(self.interval):
            now = self.stats.snapshot()
            parts = []
            for op, (count, errors, total_ns, *_) in sorted(now.items()):
                before = last.get(op, (0, 0, 0, None, 0))
                n = count - before[0]
                if n:
                    mean = (total_ns - before[2]) / n / 1000
                    parts.append(f"{opcode_name(op)}={n}({mean:.1f}us"
                                 f"{', %d err' % (errors - before[1]) if errors - before[1] else ''})")
            total = sum(c for c, *_ in now.values()) - sum(c for c, *_ in last.values())
            log.info("metrics: %d requests in %.0fs (%.0f/s)%s", total, self.interval,
                     total / self.interval, (": " + " ".join(parts)) if parts else "")
            last = now


def _metrics_handler():
    """The request handler class of the metrics endpoint.  ``http.server`` (with the email and
    ssl modules it pulls in) is imported only by a daemon that serves metrics, when it sets up
    its sockets, which is before the sandbox."""
    global _MetricsHandler
    if _MetricsHandler is not None:
        return _MetricsHandler
    import http.server

    class MetricsHandler(http.server.BaseHTTPRequestHandler):
        """``GET /metrics`` (a query string is ignored): the Prometheus text format; other
        paths 404; methods other than GET and HEAD 501 (the base class's answer)."""

        server_version = "fastvfs"

        def do_GET(self):
            self._answer(send_body=True)

        def do_HEAD(self):
            self._answer(send_body=False)

        def _answer(self, send_body):
            if self.path.partition("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            body = prometheus(self.server.stats.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    _MetricsHandler = MetricsHandler
    return MetricsHandler


_MetricsHandler = None


def _bind_tcp(address):
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> a listening TCP socket."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(8)
    return sock


def _bind(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)   # the counters are the operator's business only
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(8)
    return sock


# -- the client: fastvfs stats --------------------------------------------------------------------

def fetch(path, command=b"json", timeout=5):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def format_table(doc, previous=None, elapsed=None):
    lines = [f"{'opcode':<14}{'count':>12}{'errors':>9}{'engine':>9}{'mean us':>10}"
             f"{'p50<= us':>10}{'p99<= us':>10}" + (f"{'rate/s':>11}" if previous else "")]
    for name, op in doc["ops"].items():
        row = (f"{name:<14}{op['count']:>12,}{op['errors']:>9,}{op.get('engine', 0):>9,}"
               f"{op['mean_us']:>10.1f}{op['p50_le_us']:>10.1f}{op['p99_le_us']:>10.1f}")
        if previous:
            before = previous["ops"].get(name, {}).get("count", 0)
            row += f"{(op['count'] - before) / elapsed:>11,.0f}"
        lines.append(row)
    lines.append(f"{'total':<14}{doc['total']:>12,}{'':>9}{doc.get('total_engine', 0):>9,}")
    lines.append("engine: answered by the Python engine, not the C hot path; p50<=, p99<=: "
                 "upper bounds of the log2 latency buckets holding the quantile")
    return "\n".join(lines)


def stats_main(argv):
    p = argparse.ArgumentParser(prog="fastvfs stats",
                                description="per-opcode request counts and latencies of a "
                                            "running fastvfs daemon")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-path", help="the daemon's vhost-user socket path (its control "
                                             "socket is this path + '.stats')")
    where.add_argument("--stats-socket", help="the daemon's control socket")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.add_argument("--prometheus", action="store_true", help="print Prometheus text format")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="refresh every SECONDS with per-second rates")
    args = p.parse_args(argv)
    path = args.stats_socket or args.socket_path + STATS_SUFFIX
    try:
        if args.prometheus:
            sys.stdout.write(fetch(path, b"prometheus").decode())
            return 0
        previous = None
        while True:
            t = time.monotonic()
            doc = json.loads(fetch(path))
            if args.json:
                print(json.dumps(doc, indent=2))
            else:
                if args.watch:
                    print("\033[H\033[J", end="")
                print(format_table(doc, previous, args.watch))
            if not args.watch:
                return 0
            previous = doc
            time.sleep(max(0.0, args.watch - (time.monotonic() - t)))
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        print(f"fastvfs stats: no daemon answers on {path}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
