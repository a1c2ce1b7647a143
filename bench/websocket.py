"""Fan-out of a job's live frames: N logged-in viewers of one job, publish to receipt.

    python -m bench websocket [--quick] [--viewers N ...] [--seconds S] [--servers K]
                              [--clients C] [--url REDIS_URL] [--no-baseline]

An embedded platform (SQLite) with the production channel layer (Redis at ``--url``, default
REDIS_URL or db 14 of the local Redis) runs in ``--servers`` daphne processes of its own
(hub.asgi, as deployed). One user and one running job are made; N viewers (lean asyncio websocket
clients in ``--clients`` processes, each logged in with that user's session cookie and Origin,
through the real auth and Job.can_view at connect) open /ws/jobs/<id>/ and read the snapshot.
Then a separate publisher process calls ``live.broadcast.job_update(job, "report", ...)``, the
function orchestration calls, 10 times a second with a ~2 KB report carrying its publish time
(CLOCK_MONOTONIC, system-wide on Linux). Each viewer records receive time minus publish time
per frame. ``lost``: frames published but not received by a viewer within the drain time.

Two modes, same run, same N: ``hub`` (live.hub, one channel-layer subscription and one
encoding per server process) and ``old`` (DFL_LIVE_HUB=0: a group member and a json.dumps
per viewer, the baseline). Targets: p95 < 50 ms at 500 viewers, < 100 ms at 1,000, nothing
lost. ``--quick``: 50 viewers, 3 s per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._platform import ROOT, _free_port

RATE_HZ = 10
PAD = 1900  # bytes of filler: the frame's text is ~2 KB

SETUP = """
import json
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from jobs.models import Job

owner = get_user_model().objects.create_user("viewer", password="bench-password-not-used-0")
job = Job.objects.create(owner=owner, name="fan-out bench", num_peers=2, rounds=1, status=Job.Status.RUNNING,
                         current_round=1, started_at=timezone.now())
client = Client()
client.force_login(owner)
print(json.dumps([job.id, client.cookies["sessionid"].value]))
"""

PUBLISH = """
import json, sys, time
from live.broadcast import job_update
job_id, seconds, rate, pad = {job_id}, {seconds}, {rate}, {pad}
from live.models import JobSequence
first = JobSequence.current(job_id) + 1
count, calls = 0, []
start = time.monotonic()
while count < seconds * rate:
    due = start + count / rate
    time.sleep(max(0.0, due - time.monotonic()))
    t0 = time.monotonic()
    job_update(job_id, "report", {{"t0": t0, "round": 1, "node": count, "pad": "x" * pad}})
    calls.append(time.monotonic() - t0)
    count += 1
calls.sort()
print(json.dumps([first, JobSequence.current(job_id), count, calls[len(calls) // 2]]))
"""


# -- viewers (client processes: asyncio + websockets, no Django) -------------------------------


def _viewer_proc(urls: list[str], job_id: int, cookie: str, conn) -> None:
    asyncio.run(_viewers(urls, job_id, cookie, conn))


class _Socket(asyncio.Protocol):
    """A lean websocket client for many viewers in one process: the HTTP upgrade by hand, then
    the server's (unmasked) frames parsed straight from the stream; a frame's receive time is
    when its last bytes arrived. Only what the bench needs: text frames, no fragmentation."""

    def __init__(self, lat: list[float], seqs: list[int]):
        self.lat, self.seqs = lat, seqs
        self.buf = b""
        self.upgraded = False
        self.snapshot: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport: asyncio.Transport = transport

    def connection_lost(self, exc) -> None:
        if not self.snapshot.done():
            self.snapshot.set_exception(ConnectionError(f"closed before the snapshot: {self.buf[:200]!r}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.snapshot.set_exception(ConnectionError(buf[:200].decode(errors="replace")))
                return
            self.upgraded, buf = True, buf[end + 4 :]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            opcode, length, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            if opcode == 1:
                self.frame(buf[pos + head : pos + head + length], now)
            pos += head + length
        self.buf = buf[pos:]

    def frame(self, text: bytes, now: float) -> None:
        if not self.snapshot.done():
            self.snapshot.set_result(text[:40])
            return
        # {"kind": "report", "seq": N, "data": {"t0": T, ...: read without parsing 2 KB
        i = text.find(b'"seq": ')
        j = text.find(b",", i)
        k = text.find(b'"t0": ', j)
        m = text.find(b",", k)
        if i >= 0 and k >= 0:
            self.seqs.append(int(text[i + 7 : j]))
            self.lat.append(now - float(text[k + 6 : m]))


async def _viewers(urls: list[str], job_id: int, cookie: str, conn) -> None:
    lat: list[float] = []
    seqs: list[int] = []
    gate = asyncio.Semaphore(20)
    loop = asyncio.get_running_loop()

    async def open_one(url: str) -> _Socket:
        host, port = url.removeprefix("http://").split(":")
        async with gate:
            _, sock = await loop.create_connection(lambda: _Socket(lat, seqs), host, int(port))
            key = base64.b64encode(os.urandom(16)).decode()
            sock.transport.write(
                (
                    f"GET /ws/jobs/{job_id}/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"Origin: {url}\r\nCookie: sessionid={cookie}\r\n\r\n"
                ).encode()
            )
            first = await asyncio.wait_for(sock.snapshot, 120)
            assert first.startswith(b'{"kind": "snapshot"'), first
            return sock

    conn.recv()  # go
    try:
        sockets = await asyncio.gather(*(open_one(url) for url in urls))
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", len(sockets)))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    conn.send(("done", lat, seqs))
    for sock in sockets:
        sock.transport.close()


# -- the platform -----------------------------------------------------------------------------


def _env(var: str, redis_url: str, hub: bool) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": var,
        "DFL_EMBEDDED": "1",
        "DFL_VAR_DIR": var,
        "DFL_CHANNEL_LAYER": "redis",
        "REDIS_URL": redis_url,
        "DFL_LIVE_HUB": "1" if hub else "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        "LOG_LEVEL": "WARNING",
    }


@contextlib.contextmanager
def _servers(var: str, redis_url: str, hub: bool, count: int):
    env = _env(var, redis_url, hub)
    procs, urls = [], []
    try:
        for n in range(count):
            port = _free_port()
            log = open(Path(var) / f"daphne-{n}.log", "ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "hub.asgi:application"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/login/", timeout=2).read()
                    break
                except OSError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("daphne did not start") from exc
                    time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def _run(var, redis_url, urls, job_id, cookie, viewers, clients, seconds, hub) -> dict:
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for c in range(clients):
        share = [urls[(c + clients * i) % len(urls)] for i in range(viewers) if i % clients == c]
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_viewer_proc, args=(share, job_id, cookie, there), daemon=True)
        proc.start()
        here.send(True)
        pipes.append(here)
        procs.append(proc)
    t_connect = time.monotonic()
    opened = 0
    for p in pipes:
        msg = p.recv()
        if msg[0] != "ready":
            raise RuntimeError(f"viewers failed to connect: {msg[1]}")
        opened += msg[1]
    t_connect = time.monotonic() - t_connect
    code = PUBLISH.format(job_id=job_id, seconds=seconds, rate=RATE_HZ, pad=PAD)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=_env(var, redis_url, hub),
        check=True,
        capture_output=True,
        text=True,
    )
    first, last, published, call = json.loads(out.stdout.strip().splitlines()[-1])
    time.sleep(min(10.0, 2.0 + seconds / 5))  # drain
    lat: list[float] = []
    got = 0
    for p in pipes:
        p.send("stop")
        _, l_, s_ = p.recv()
        keep = [x for x, s in zip(l_, s_, strict=True) if first <= s <= last]
        lat.extend(keep)
        got += len(keep)
    for proc in procs:
        proc.join(15)
    lat.sort()
    ms = [x * 1000 for x in lat] or [float("nan")]
    return {
        "mode": "hub" if hub else "old",
        "viewers": opened,
        "published": published,
        "lost": published * opened - got,
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
        "max_ms": round(ms[-1], 1),
        "connect_s": round(t_connect, 1),
        "publish_call_ms": round(call * 1000, 1),  # median time inside job_update (seq + send)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench websocket")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--viewers", type=int, nargs="+")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--old-seconds", type=float, help="publish time of the baseline (default: --seconds)")
    ap.add_argument("--servers", type=int, default=1)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    sizes = args.viewers or ([50] if args.quick else [100, 500, 1000])
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    old_seconds = args.old_seconds or seconds

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-websocket-") as var:
        env = _env(var, args.url, True)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        made = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", SETUP],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        job_id, cookie = json.loads(made.stdout.strip().splitlines()[-1])
        for hub in (True,) if args.no_baseline else (True, False):
            with _servers(var, args.url, hub, args.servers) as urls:
                for n in sizes:
                    row = _run(
                        var, args.url, urls, job_id, cookie, n, args.clients, seconds if hub else old_seconds, hub
                    )
                    rows.append(row)
                    print(
                        f"{row['mode']:>4} N={row['viewers']:>5}  p50 {row['p50_ms']:>8} ms  p95 {row['p95_ms']:>8} ms"
                        f"  max {row['max_ms']:>8} ms  lost {row['lost']:>6}/{row['published'] * row['viewers']}"
                        f"  (connect {row['connect_s']} s, job_update {row['publish_call_ms']} ms)",
                        flush=True,
                    )

    def pick(mode: str, n: int, key: str):
        return next((r[key] for r in rows if r["mode"] == mode and r["viewers"] == n), None)

    largest = max(sizes)
    value, baseline = pick("hub", largest, "p95_ms"), pick("old", largest, "p95_ms")
    result = {
        "bench": "websocket",
        "metric": "p95 ms publish to receipt",
        "value": value,
        "baseline": baseline,
        "ratio": round(value / baseline, 3) if value and baseline else None,
        "target": "p95 < 50 ms at 500, < 100 ms at 1000, lost 0",
        "device": "cpu",
        "quick": args.quick,
        "servers": args.servers,
        "clients": args.clients,
        "seconds": seconds,
        "rate_hz": RATE_HZ,
        "p95_ms_500": pick("hub", 500, "p95_ms"),
        "p95_ms_1000": pick("hub", 1000, "p95_ms"),
        "lost": sum(r["lost"] for r in rows if r["mode"] == "hub"),
        "rows": rows,
    }
    print(json.dumps(result))
    return 0
