"""Fleet simulation: N gateways return at once after a regional outage and drain against ONE org.

``python -m bench.fleet --gateways 1000 --outage-seconds 3600`` runs one scenario and prints its
figures; ``run(quick)`` returns table rows for ``python -m bench`` (quick: 100 gateways only).

Shape of a run (every step bounded in time, loopback only):

* One emulator in its own (spawned) process enforces the org limits: ``rate_limit_rps`` requests/s
  over every ingest endpoint (250), 5 concurrent / 20 per hour bulk jobs. Streaming bodies are not
  schema-validated there (JSON is still parsed and every record upserted): one Python core cannot
  validate 250 bodies of 275 records per second, and validation is not what this measures.
* ``workers`` gateway processes each run a slice of the fleet in one event loop. Every gateway is
  the real thing: its own Outbox file (own SQLite writer thread), its own ``Drain`` with both lanes,
  its own ``Pacer``, ``StreamingClient`` and ``BulkLane`` (with the per-gateway ``JobBudget`` the
  runtime gives it). What a process shares: one aiohttp session (connection pool, sized to the
  gateways, so nobody queues behind a pool limit) and one ``TokenProvider``. Sharing the token is
  deliberate: token endpoints are not under the 250 requests/s ingest limit (the emulator does not
  throttle them either), a token lives 2 h so a real gateway logs in once per outage at most, and
  1,000 RS256 signatures and verifications at t0 would measure our 2-core box, not the drain.
* Each outbox is pre-filled with ``rate * T`` readings whose times (and enqueue times) are spread
  over the outage, i.e. the last T seconds. Then every drain starts at the same instant: the link
  is back (optionally the emulator stays in outage for ``live_outage_seconds`` first, so the
  gateways are in backoff when it returns). Every gateway keeps producing one fresh reading per
  ``1/rate`` s during the drain.
* Converged = every gateway's outbox holds no row enqueued before the return (all backlog acked;
  acks follow a 202 or a JobComplete, and the final reconciliation checks the landed table).
* Then fresh production stops, every drain is flushed, and every produced event id is looked up
  in the emulator's landed table: ``lost`` must be 0.

``explicit_jitter_seconds`` measures a delay the Drain does not have today: each gateway makes its
first request after the return (both lanes) at uniform(0, J), as a drain would if it used
``DrainConfig.reconnect_jitter_seconds`` on start / link-up. Without it the stream lane's first
flush comes one ``flush_interval_seconds`` after start, for every gateway at the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import random
import sqlite3
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from agent.bulk_lane import BulkLane
from agent.config import DataCloudConfig, DrainConfig, OutboxConfig
from agent.datacloud import BulkClient, Pacer, StreamingClient, TokenProvider
from agent.drain import Drain
from agent.outbox import Lease, Outbox
from agent.records import Reading, RecordBuilder, load_schema

SOURCE = "solar_agent"
OBJECT = "solar_panel_event"
_METRICS: dict[str, float | str] = {"ac_power_w": 4321.5, "ac_energy_wh": 12_345_678.0, "dc_voltage_v": 612.3,
                                    "temperature_c": 43.25, "operating_state": "MPPT"}

# The agent ships DrainConfig() (flush every 120 s, tuned with this simulation). The comparison
# runs the same code with the earlier 30 s flush interval, to show what the default buys.
SHIPPED = DrainConfig()
EARLIER = replace(DrainConfig(), flush_interval_seconds=30.0)


@dataclass(frozen=True)
class FleetSpec:
    """One scenario. ``rate_limit_rps`` below 250 is how the 10,000-gateway case is scaled down."""

    gateways: int
    outage_seconds: float
    drain: DrainConfig = field(default_factory=DrainConfig)
    rate_per_second: float = 0.1          # readings per gateway per second, during and after the outage
    explicit_jitter_seconds: float = 0.0
    live_outage_seconds: float = 0.0
    rate_limit_rps: float = 250.0
    max_jobs_per_hour: int = 20
    max_concurrent_jobs: int = 5
    bulk_processing_seconds: float = 2.0
    workers: int = 2
    deadline_seconds: float = 900.0       # convergence must happen within this, else the run says so
    seed: int = 1


# --------------------------------------------------------------------------------------------
# The emulator process


def _emulator_main(public_pem: bytes, spec: FleetSpec, db_path: str, conn: Any, stop: Any) -> None:
    from agent.emulator import Emulator, EmulatorSettings

    _quiet()

    async def main() -> None:
        settings = EmulatorSettings(host="127.0.0.1", public_key_pem=public_pem, rate_limit_rps=spec.rate_limit_rps,
                                    max_jobs_per_hour=spec.max_jobs_per_hour,
                                    max_concurrent_jobs=spec.max_concurrent_jobs,
                                    bulk_processing_seconds=spec.bulk_processing_seconds,
                                    validate_streaming=False, db_path=Path(db_path))
        async with Emulator(settings) as emu:
            conn.send(emu.url)
            await asyncio.to_thread(stop.wait)  # parked until the parent sets the stop event

    asyncio.run(main())


def _admin(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Blocking admin call from the parent process (it runs no event loop)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}/__emulator/{path}", data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------------------------
# A gateway process


@dataclass(frozen=True)
class _WorkerArgs:
    spec: FleetSpec
    first: int                # gateway index range [first, last)
    last: int
    url: str
    key_path: str
    dir: str
    return_ms: int            # wall time the gateways come back (backlog = readings before this)


@dataclass
class _Gateway:
    index: int
    outbox: Outbox
    drain: Drain
    builder: RecordBuilder
    produced: list[str]
    converged_ms: int | None = None


class _GatedSink:
    """Waits on the gateway's return gate before the first call: the explicit reconnect jitter."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self._inner = inner
        self._gate = gate
        self.max_lease_bytes = getattr(inner, "max_lease_bytes", 0)

    async def deliver(self, rows: list[tuple[str, bytes]], *, pace: Any = None) -> object:
        await self._gate.wait()
        return await self._inner.deliver(rows, pace=pace)

    async def run_job(self, lease: Lease) -> str:
        await self._gate.wait()
        return str(await self._inner.run_job(lease))

    async def resume_jobs(self) -> list[tuple[Lease, str]]:
        return list(await self._inner.resume_jobs())

    async def forget(self, lease: Lease) -> None:
        await self._inner.forget(lease)


def _quiet() -> None:
    # Thousands of gateways logging every 429 would measure the log handler, not the drain.
    logging.getLogger("agent").setLevel(logging.ERROR)


def _worker_main(args: _WorkerArgs, conn: Any) -> None:
    _quiet()
    asyncio.run(_worker(args, conn))


async def _prefill(args: _WorkerArgs, index: int, schema: Any) -> tuple[RecordBuilder, list[str], Path]:
    """A gateway's outbox as the outage left it: one reading per 1/rate s over the last T seconds."""
    spec = args.spec
    builder = RecordBuilder(schema, site_id=f"site-{index:05d}", customer_id="001XX000003DHPh",
                            agent_version="0.1.0")
    path = Path(args.dir) / f"gw{index:05d}.db"
    period_ms = int(1000 / spec.rate_per_second)
    n = int(spec.rate_per_second * spec.outage_seconds)
    start = args.return_ms - n * period_ms + (index * 7919) % period_ms
    records = [builder.encode(Reading("inv1", start + k * period_ms, "sunspec-rtu", _METRICS)) for k in range(n)]
    clock = [start]
    async with Outbox(OutboxConfig(path=path, synchronous="normal"), now_ms=lambda: clock[0]) as box:
        # Ten-minute chunks so enqueue times follow the readings (the drain's age logic reads them).
        step = max(1, int(600 * spec.rate_per_second))
        for i in range(0, n, step):
            clock[0] = start + i * period_ms
            await box.append(records[i:i + step])
    return builder, [r.event_id for r in records], path


async def _worker(args: _WorkerArgs, conn: Any) -> None:
    spec = args.spec
    schema = load_schema()
    rng = random.Random(spec.seed * 100_003 + args.first)
    prepared = []
    for i in range(args.first, args.last, 16):
        prepared += await asyncio.gather(*(_prefill(args, j, schema) for j in range(i, min(args.last, i + 16))))
    cfg = DataCloudConfig(login_url=args.url, client_id="solar-agent", username="agent@solar.example",
                          private_key_path=Path(args.key_path), source_name=SOURCE, timeout_seconds=30)
    n = args.last - args.first
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(8, n), limit_per_host=0)))
        tokens = TokenProvider(cfg, session)
        await tokens.token()
        gates: list[asyncio.Event] = []
        gateways: list[_Gateway] = []
        for builder, ids, path in prepared:
            box = await stack.enter_async_context(Outbox(OutboxConfig(path=path, synchronous="normal")))
            gate = asyncio.Event()
            gates.append(gate)
            stream = _GatedSink(StreamingClient(tokens, session, SOURCE, OBJECT,
                                                max_body_bytes=spec.drain.batch_max_bytes), gate)
            bulk = _GatedSink(BulkLane(BulkClient(tokens, session, SOURCE, OBJECT), box, schema,
                                       max_file_bytes=spec.drain.bulk_file_max_bytes, tmp_dir=path.parent), gate)
            drain = Drain(box, stream, bulk, spec.drain, pacer=Pacer(spec.drain.max_requests_per_second),
                          rng=random.Random(rng.random()))
            gateways.append(_Gateway(int(path.stem[2:]), box, drain, builder, ids))
        conn.send(("ready", n))
        msg = await asyncio.to_thread(conn.recv)
        assert msg == "go", msg
        summary = await _drive(spec, gateways, gates, rng, conn, args.return_ms)
        ids_file = Path(args.dir) / f"ids-{args.first}.txt"
        await asyncio.to_thread(ids_file.write_text, "\n".join(e for g in gateways for e in g.produced) + "\n")
        summary["ids_file"] = str(ids_file)
        # What is still queued is not lost: it stays durable in the gateway's outbox and goes later.
        queued = [r.event_id for g in gateways for r in await g.outbox.peek(10**7)]
        queued_file = Path(args.dir) / f"queued-{args.first}.txt"
        await asyncio.to_thread(queued_file.write_text, "\n".join(queued) + "\n")
        summary["queued_file"] = str(queued_file)
    conn.send(("done", summary))


async def _drive(spec: FleetSpec, gateways: list[_Gateway], gates: list[asyncio.Event], rng: random.Random,
                 conn: Any, return_ms: int) -> dict[str, Any]:
    """Run the drains and producers until converged, then flush; returns this process's figures."""
    loop = asyncio.get_running_loop()
    finish = asyncio.Event()
    period = 1.0 / spec.rate_per_second

    async def open_gate(g: _Gateway, gate: asyncio.Event) -> None:
        if spec.explicit_jitter_seconds <= 0:
            gate.set()
            return
        await asyncio.sleep(rng.uniform(0, spec.explicit_jitter_seconds))  # the jitter under test
        gate.set()
        # The first attempt happens at the jittered instant, not one flush interval after start
        # (which would put every gateway back in lockstep).
        g.drain.flush_now()

    async def produce(g: _Gateway) -> None:
        await asyncio.sleep(rng.uniform(0, period))  # gateways' clocks are not in phase
        while not finish.is_set():
            rec = g.builder.encode(Reading("inv1", time.time_ns() // 1_000_000, "sunspec-rtu", _METRICS))
            await g.outbox.append([rec])
            g.produced.append(rec.event_id)
            g.drain.notify_appended(1, len(rec.payload))
            await asyncio.sleep(period)  # the reading cadence itself

    async def monitor() -> None:
        pending = list(gateways)
        while pending:
            stats = await asyncio.gather(*(g.outbox.stats() for g in pending))
            now = time.time_ns() // 1_000_000
            for g, st in zip(pending, stats, strict=True):
                if st.oldest_enqueued_ms is None or st.oldest_enqueued_ms >= return_ms:
                    g.converged_ms = now
            pending = [g for g in pending if g.converged_ms is None]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finish.wait(), 0.5)
            if finish.is_set():
                return
        conn.send(("converged", max(g.converged_ms or 0 for g in gateways)))

    async def control() -> None:
        msg = await asyncio.to_thread(conn.recv)
        assert msg == "finish", msg
        finish.set()

    started = loop.time()
    async with asyncio.TaskGroup() as tg:
        drains = [tg.create_task(g.drain.run(), name=f"fleet[gw{g.index}].drain") for g in gateways]
        producers = [tg.create_task(produce(g), name=f"fleet[gw{g.index}].produce") for g in gateways]
        for g, gate in zip(gateways, gates, strict=True):
            tg.create_task(open_gate(g, gate), name=f"fleet[gw{g.index}].gate")
        tg.create_task(monitor(), name="fleet.monitor")
        await tg.create_task(control(), name="fleet.control")
        for p in producers:
            p.cancel()
        await asyncio.gather(*producers, return_exceptions=True)
        # Fresh rows wait for the flush interval; ask for them now and wait until every outbox is empty.
        for gate in gates:
            gate.set()
        # Once: flush_now also cancels a backoff, and repeating it would hammer a throttled org.
        for g in gateways:
            g.drain.flush_now()
        left = -1
        deadline = loop.time() + 180
        while loop.time() < deadline:
            stats = await asyncio.gather(*(g.outbox.stats() for g in gateways))
            left = sum(s.rows for s in stats)
            if left == 0:
                break
            await asyncio.sleep(1.0)  # polling a condition with a deadline
        for g in gateways:
            g.drain.stop()
        for d in drains:
            d.cancel()
    stats = await asyncio.gather(*(g.outbox.stats() for g in gateways))
    return {
        "gateways": len(gateways),
        "produced": sum(len(g.produced) for g in gateways),
        "left_in_outboxes": sum(s.rows for s in stats),
        "dead_letters": sum(s.dead_letters for s in stats),
        "dropped": sum(s.dropped_total for s in stats),
        "stream_requests": sum(g.drain.stream_state.requests_total for g in gateways),
        "stream_failures": sum(g.drain.stream_state.failures_total for g in gateways),
        "bulk_jobs_ok": sum(g.drain.bulk_state.jobs_total for g in gateways),
        "sent_stream": sum(g.drain.stream_state.sent_total for g in gateways),
        "sent_bulk": sum(g.drain.bulk_state.sent_total for g in gateways),
        "unconverged": sum(1 for g in gateways if g.converged_ms is None),
        "seconds": round(loop.time() - started, 1),
    }


# --------------------------------------------------------------------------------------------
# The parent


def _keypair(tmp: Path) -> tuple[Path, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp / "fleet.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _recv(conn: Any, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"fleet: no {what} within {timeout:.0f}s")
    return conn.recv()


def simulate(spec: FleetSpec) -> dict[str, Any]:
    """Run one scenario end to end; returns its figures (``lost`` must be 0)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_s:
        tmp = Path(tmp_s)
        key, public = _keypair(tmp)
        db = tmp / "landed.sqlite"
        stop = ctx.Event()
        parent, child = ctx.Pipe()
        emu = ctx.Process(target=_emulator_main, args=(public, spec, str(db), child, stop), daemon=True)
        emu.start()
        procs: list[Any] = []
        try:
            url = _recv(parent, 30, "emulator url")
            return_ms = time.time_ns() // 1_000_000
            workers = max(1, min(spec.workers, spec.gateways))
            bounds = [spec.gateways * k // workers for k in range(workers + 1)]
            pipes = []
            for k in range(workers):
                a, b = ctx.Pipe()
                args = _WorkerArgs(spec, bounds[k], bounds[k + 1], url, str(key), str(tmp), return_ms)
                p = ctx.Process(target=_worker_main, args=(args, b), daemon=True)
                p.start()
                procs.append(p)
                pipes.append(a)
            prefill_t0 = time.monotonic()
            for a in pipes:
                _recv(a, 60 + spec.gateways * 0.2, "worker ready")
            prefill_s = time.monotonic() - prefill_t0
            if spec.live_outage_seconds > 0:
                _admin(url, "faults", {"outage": True})
            before = _admin(url, "stats")
            t0 = time.monotonic()
            for a in pipes:
                a.send("go")
            if spec.live_outage_seconds > 0:
                time.sleep(spec.live_outage_seconds)  # the outage's tail, by design
                _admin(url, "faults", {"outage": False})
            t_back = time.monotonic()
            converged_at: list[float] = []
            deadline = t0 + spec.live_outage_seconds + spec.deadline_seconds
            for a in pipes:
                left = max(0.1, deadline - time.monotonic())
                if a.poll(left):
                    kind, _ = a.recv()
                    assert kind == "converged", kind
                    converged_at.append(time.monotonic())
            converged = len(converged_at) == len(pipes)
            at_convergence = _admin(url, "stats")
            for a in pipes:
                a.send("finish")
            summaries = [_recv(a, 300, "worker done")[1] for a in pipes]
            final = _admin(url, "stats")
        finally:
            stop.set()
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.terminate()
            emu.join(30)
            if emu.is_alive():
                emu.terminate()
        produced: set[str] = set()
        queued: set[str] = set()
        for s in summaries:
            produced.update(Path(s["ids_file"]).read_text().split())
            queued.update(Path(s["queued_file"]).read_text().split())
        with contextlib.closing(sqlite3.connect(db)) as landed_db:
            landed = {r[0] for r in landed_db.execute(
                "SELECT pk FROM landed_objects WHERE object = 'solar_panel_event'")}
    total = {k: sum(s[k] for s in summaries) for k in summaries[0] if isinstance(summaries[0][k], int)}
    return {
        "spec": {**asdict(replace(spec, drain=spec.drain)), "drain": asdict(spec.drain)},
        "converged": converged,
        "converge_seconds": round(max(converged_at) - t_back, 1) if converged else None,
        "prefill_seconds": round(prefill_s, 1),
        "backlog_rows": spec.gateways * int(spec.rate_per_second * spec.outage_seconds),
        "produced": len(produced),
        # Lost: produced, not landed, and not in any outbox either. Undelivered: still queued at the end.
        "lost": len(produced - landed - queued),
        "undelivered_at_end": len(produced - landed),
        "requests_429": _count(at_convergence, 429) - _count(before, 429),
        "requests_429_total": _count(final, 429),
        "rate_limited": at_convergence["rate_limited"] - before["rate_limited"],
        "ingest_requests": _ingest(at_convergence) - _ingest(before),
        "peak_rps": at_convergence["peak_rps"],
        "bulk_jobs_created": _count(at_convergence, 201, "job_create"),
        "bulk_job_429": _count(at_convergence, 429, "job_create"),
        **total,
    }


def _count(stats: dict[str, Any], status: int, endpoint: str | None = None) -> int:
    return sum(n for ep, by in stats["requests"].items() if endpoint in (None, ep)
               for st, n in by.items() if int(st) == status)


def _ingest(stats: dict[str, Any]) -> int:
    return sum(n for ep, by in stats["requests"].items() if ep not in ("oauth_token", "a360_token")
               for n in by.values())


# --------------------------------------------------------------------------------------------
# Entry points


def _rows(label: str, cur: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows comparing the shipped defaults ("ours") with a 30 s flush interval ("raw")."""
    def ratio(a: Any, b: Any) -> float | None:
        return round(b / a, 2) if a and b is not None else None
    out = []
    for key, unit, name in (("converge_seconds", "s", "time to converge"), ("requests_429", "requests", "429s"),
                            ("peak_rps", "requests/s", "peak request rate (limit 250)"),
                            ("bulk_jobs_created", "jobs", "bulk jobs used (org: 20/h)"),
                            ("undelivered_at_end", "records", "still queued (durable) after the final 180 s drain"),
                            ("lost", "records", "lost")):
        out.append({"name": f"fleet {label}: {name}, shipped defaults vs 30 s flush", "ours": new[key],
                    "raw": cur[key], "ratio": ratio(new[key], cur[key]), "unit": unit,
                    **({"target": 0} if key == "lost" else {})})
    if not new["converged"] or not cur["converged"]:
        out.append({"name": f"fleet {label}: converged (shipped / 30 s flush)", "ours": int(new["converged"]),
                    "raw": int(cur["converged"]), "ratio": None, "unit": "1 = yes"})
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """100 gateways (quick), plus 1,000 and a scaled 10,000; T = 1 h; shipped defaults vs a 30 s flush."""
    cases: list[tuple[str, FleetSpec]] = [("100 gw, 1 h outage", FleetSpec(100, 3600.0, workers=1))]
    if not quick:
        cases.append(("1,000 gw, 1 h outage", FleetSpec(1000, 3600.0, deadline_seconds=600.0)))
        # 10,000 gateways against 250 req/s is modelled as 1,000 against 25 req/s (CPU of one machine).
        cases.append(("10,000 gw scaled 1/10 (1,000 gw at 25 req/s), 1 h outage",
                      FleetSpec(1000, 3600.0, rate_limit_rps=25.0, deadline_seconds=420.0)))
    rows: list[dict[str, Any]] = []
    for label, spec in cases:
        cur = simulate(replace(spec, drain=EARLIER))
        new = simulate(replace(spec, drain=SHIPPED))
        rows += _rows(label, cur, new)
    return rows


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--outage-seconds", type=float, default=3600.0)
    p.add_argument("--rate", type=float, default=0.1, help="readings per gateway per second")
    p.add_argument("--rate-limit-rps", type=float, default=250.0, help="the org's request limit (scale it down "
                   "with the fleet to model a bigger fleet)")
    p.add_argument("--workers", type=int, default=2, help="gateway processes")
    p.add_argument("--jitter", type=float, default=0.0, help="explicit random delay before the first request")
    p.add_argument("--live-outage", type=float, default=0.0, help="seconds the outage lasts after the drains start")
    p.add_argument("--deadline", type=float, default=900.0)
    p.add_argument("--earlier", action="store_true", help="use the earlier 30 s flush interval instead of the defaults")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a DrainConfig field")
    a = p.parse_args(argv)
    drain = EARLIER if a.earlier else DrainConfig()
    for item in a.set:
        name, _, value = item.partition("=")
        drain = replace(drain, **{name: type(getattr(drain, name))(value)})
    spec = FleetSpec(a.gateways, a.outage_seconds, drain=drain, rate_per_second=a.rate,
                     explicit_jitter_seconds=a.jitter, live_outage_seconds=a.live_outage,
                     rate_limit_rps=a.rate_limit_rps, workers=a.workers, deadline_seconds=a.deadline)
    result = simulate(spec)
    print(json.dumps(result, indent=1))
    return 0 if result["lost"] == 0 and result["converged"] else 1


if __name__ == "__main__":
    sys.exit(_main())
