"""Agent footprint: one site of 100 SunSpec inverters read at 1 Hz, delivered to the emulator.

``python -m bench.agent [--quick]`` prints the rows; ``run(quick)`` returns them for results.md.

Three processes besides the harness, so the agent's figures are its own:

* devices: 10 Modbus TCP servers on loopback, 10 unit ids each (``SunSpecSimulator``, model 103
  with scale factors), i.e. what a site with a few TCP data loggers in front of RS-485 strings
  looks like. Modbus is the agent's heaviest source path (discovery, block reads, decoding,
  per-device breakers), more so than an MQTT JSON feed, so the figures are not flattered.
* emulator: the Data Cloud emulator (no rate limit, streaming validation on). Its landed-rows
  store has no landing timestamp, so this benchmark's emulator process wraps ``store.upsert``
  and notes the wall time each row lands: latency = landing wall time - the reading's
  ``date_time`` (the source's reading stamp), i.e. reading -> accepted and stored by the emulator.
* agent: the real ``Agent`` (runtime, outbox with synchronous=FULL, drain, status socket) with
  the single-site low-latency setting a 1 Hz site needs for p99 <= 2 s:
  ``drain.flush_interval_seconds = 1`` and ``outbox.commit_interval_ms = 250`` (the defaults, a
  120 s flush and 1 s commits, batch for cost and SD-card wear, not latency; bench/wear.py
  measures them).

After a warm-up the harness samples the agent process from /proc: VmRSS every second (the row
is the largest sample), utime + stime over the window (CPU share of one core), and write_bytes
(what the agent sent to storage; the window starts and ends with a WAL checkpoint, so the
checkpoint writes of its own frames are in it).

The CPU row's raw (``run`` only, not the wear runs): after the agent has stopped, pymodbus alone
polls the same devices' same registers in step, in a process of its own, over a window as long
(``_raw_poller_main``): the part of the agent's CPU the Modbus library takes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIENT_ID = "solar-agent"
USERNAME = "agent@solar.example"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Site:
    """A site the benchmark runs: buses x units SunSpec devices polled every poll_seconds."""

    buses: int = 10
    units_per_bus: int = 10
    poll_seconds: float = 1.0
    flush_seconds: float | None = None       # None: the shipped default (drain.flush_interval_seconds)
    commit_interval_ms: int | None = None    # None: the shipped default (outbox.commit_interval_ms)

    @property
    def devices(self) -> int:
        return self.buses * self.units_per_bus

    def label(self) -> str:
        from agent.config import DrainConfig, OutboxConfig
        flush = DrainConfig().flush_interval_seconds if self.flush_seconds is None else self.flush_seconds
        linger = OutboxConfig().commit_interval_ms if self.commit_interval_ms is None else self.commit_interval_ms
        shipped = self.flush_seconds is None and self.commit_interval_ms is None
        return (f"{self.devices} Modbus TCP devices every {self.poll_seconds:g} s; flush {flush:g} s, "
                f"commit_interval_ms {linger}{' (shipped defaults)' if shipped else ''}")


# The reference site (100 inverters at 1 Hz) with the single-site low-latency setting of the README
# (flush every second, commits every quarter second), for a p99 latency under 2 s.
LOW_LATENCY_FLUSH_SECONDS = 1.0
LOW_LATENCY_COMMIT_MS = 250
REFERENCE = Site(flush_seconds=LOW_LATENCY_FLUSH_SECONDS, commit_interval_ms=LOW_LATENCY_COMMIT_MS)


def _parse_ms(stamp: str) -> int:
    import calendar
    secs = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000 + int(stamp[20:23])


# ---- child processes (spawned: module-level functions, stdlib imports only at the top) -------

def _emulator_main(public_pem: bytes, conn: Any) -> None:
    """Emulator child: notes (landing wall ms, latency ms) per streamed row; answers "collect"."""
    import json

    from agent.emulator import Emulator, EmulatorSettings

    async def main() -> None:
        settings = EmulatorSettings(host="127.0.0.1", public_key_pem=public_pem, client_id=CLIENT_ID,
                                    username=USERNAME, rate_limit_rps=1e9)
        async with Emulator(settings) as emu:
            landed: list[tuple[int, int]] = []
            upsert = emu.store.upsert

            def timed_upsert(pairs: Any, obj: str | None = None) -> None:
                pairs = list(pairs)
                upsert(pairs, obj)
                if obj not in (None, "solar_panel_event"):
                    return          # the gateway's own status records: not readings
                now = time.time_ns() // 1_000_000
                for _, record in pairs:
                    stamp = json.loads(record).get("date_time")
                    if stamp:
                        landed.append((now, now - _parse_ms(stamp)))

            emu.store.upsert = timed_upsert  # type: ignore[method-assign]
            conn.send(emu.url)
            while await asyncio.to_thread(conn.recv) == "collect":
                conn.send(landed)

    asyncio.run(main())


def _devices_main(buses: int, units: int, conn: Any) -> None:
    """Device child: ``buses`` Modbus TCP servers with ``units`` SunSpec units each."""
    import logging

    from agent.simulators.sunspec_device import SunSpecSimulator
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            ports = []
            for b in range(buses):
                sim = SunSpecSimulator(range(1, units + 1), seed=b + 1)
                await stack.enter_async_context(sim.serve_tcp())
                ports.append(sim.port)
            conn.send(ports)
            await asyncio.to_thread(conn.recv)     # parked until the harness says stop

    asyncio.run(main())


def _agent_main(url: str, key_path: str, ports: list[int], workdir: str, site: Site, conn: Any) -> None:
    """Agent child: the real runtime on a config built in code (as the demo does).

    Answers "mark" with (readings committed, their payload bytes) after a WAL checkpoint (so a
    window measured between two marks holds its own checkpoint writes and nobody else's); any
    other message stops it.
    """
    import logging

    from agent.clock import ClockGuard
    from agent.config import (
        AgentConfig,
        DataCloudConfig,
        DrainConfig,
        ModbusBusConfig,
        ModbusDeviceConfig,
        OutboxConfig,
        SiteConfig,
        StatusConfig,
    )
    from agent.runtime import Agent
    imports_rss_mb = _proc_rss_mb(os.getpid())     # the interpreter + imports, before any work
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pymodbus", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    work = Path(workdir)
    outbox_cfg = OutboxConfig(path=work / "outbox.db")
    if site.commit_interval_ms is not None:
        outbox_cfg = OutboxConfig(path=work / "outbox.db", commit_interval_ms=site.commit_interval_ms)
    cfg = AgentConfig(
        source_file="<bench>",
        site=SiteConfig("bench-site", "001BENCH000000001", "bench site"),
        datacloud=DataCloudConfig(login_url=url, client_id=CLIENT_ID, username=USERNAME,
                                  private_key_path=Path(key_path), source_name="solar_agent"),
        outbox=outbox_cfg,
        modbus=tuple(
            ModbusBusConfig(f"logger{b}", "tcp", tuple(ModbusDeviceConfig(u) for u in range(1, site.units_per_bus + 1)),
                            host="127.0.0.1", tcp_port=port, timeout_seconds=1.0,
                            poll_interval_seconds=site.poll_seconds)
            for b, port in enumerate(ports)),
        drain=DrainConfig() if site.flush_seconds is None else DrainConfig(flush_interval_seconds=site.flush_seconds),
        status=StatusConfig(socket_path=work / "status.sock"),
    )

    committed = [0, 0]

    def count(records: Any) -> None:
        committed[0] += len(records)
        committed[1] += sum(len(r.payload) for r in records)

    async def main() -> int:
        agent = Agent(cfg, clock=ClockGuard(assume_synced=True), on_committed=count)
        task = asyncio.create_task(agent.run(), name="bench[agent]")
        await asyncio.wait_for(agent.ready.wait(), 60)
        conn.send(imports_rss_mb)
        while await asyncio.to_thread(conn.recv) == "mark":     # parked until the harness says stop
            assert agent.outbox is not None
            await agent.outbox.checkpoint()
            conn.send(tuple(committed))
        agent.request_stop()
        return await asyncio.wait_for(task, 30)

    sys.exit(asyncio.run(main()))


def _raw_poller_main(ports: list[int], units: int, poll_seconds: float, conn: Any) -> None:
    """Raw child: pymodbus alone polling what the agent polls (no decoding, outbox or upload).

    The SunSpec chain of each unit is found once with the agent's discovery; then every
    ``poll_seconds`` each unit's non-common models are read with the same client settings and
    register counts as the agent's Modbus source, and the registers are dropped. This is the floor
    of the agent's CPU on this site: what the field's Modbus library costs by itself.
    """
    import logging

    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.framer import FramerType

    from agent.sources.modbus import next_slot
    from agent.sources.sunspec import BASE_CANDIDATES, MAX_REGISTERS_PER_READ, SUPPORTED_MODELS, discover
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def bus(client: AsyncModbusTcpClient, blocks: list[tuple[int, int, int]]) -> None:
        while True:
            started = time.monotonic()
            for unit, address, count in blocks:
                while count > 0:
                    n = min(count, MAX_REGISTERS_PER_READ)
                    if (await client.read_holding_registers(address, count=n, device_id=unit)).isError():
                        raise RuntimeError(f"unit {unit} refused {address}+{n}")
                    address, count = address + n, count - n
            # On the poll interval's grid, in step with the other buses, as the agent polls.
            await asyncio.sleep(max(0.0, next_slot(started, poll_seconds) - time.monotonic()))

    async def main() -> None:
        buses = []
        for port in ports:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.SOCKET, timeout=1.0,
                                          retries=0, reconnect_delay=0)
            await client.connect()
            blocks = []
            for unit in range(1, units + 1):
                async def read(address: int, count: int, unit: int = unit, c: Any = client) -> list[int]:
                    return list((await c.read_holding_registers(address, count=count, device_id=unit)).registers)
                found = await discover(read, BASE_CANDIDATES)
                blocks += [(unit, m.address, m.length) for m in found.chain
                           if m.model_id != 1 and m.model_id in SUPPORTED_MODELS]
            buses.append((client, blocks))
        tasks = [asyncio.create_task(bus(client, blocks)) for client, blocks in buses]
        conn.send(sum(len(blocks) for _, blocks in buses))
        await asyncio.to_thread(conn.recv)     # parked until the harness says stop
        for task in tasks:
            task.cancel()

    asyncio.run(main())


# ---- harness ------------------------------------------------------------------------------------

def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK      # utime + stime, every thread


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _proc_pss_uss_mb(pid: int) -> tuple[float, float]:
    """Proportional and private (unshared) memory: shared libraries (libcrypto, libssl, libpython)
    count fully in RSS but are shared with every other process that maps them."""
    kb: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        kb[key] = int(rest.split()[0])
    return kb.get("Pss", 0) / 1024, (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024


def _keypair(tmp: Path) -> tuple[Path, bytes]:
    from agent.keys import generate_keypair
    keys = generate_keypair(tmp / "keys")
    return keys.private_key_path, keys.public_key_pem


class _Child:
    """A spawned child with a pipe; ``close`` asks it to stop, then terminates it if it must."""

    def __init__(self, target: Any, *args: Any, name: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(*args, child), daemon=True, name=name)
        self.proc.start()

    def recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.proc.name}: no answer within {timeout:.0f} s (exit code {self.proc.exitcode})")
        return self.conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(40)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _proc_write_bytes(pid: int) -> int:
    """Bytes the process sent to the storage layer (every thread; the page cache's writes it caused)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes for pid {pid}")


def measure(warmup_s: float, window_s: float, site: Site = REFERENCE) -> dict[str, Any]:
    """One run; figures of the agent process over the steady window.

    The window starts and ends with a WAL checkpoint in the agent, so its bytes written hold the WAL
    frames of the window and their copy into the main file (``wal_*``, ``committed_*``).
    """
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp_s:
        tmp = Path(tmp_s)
        key, public = _keypair(tmp)
        emu = _Child(_emulator_main, public, name="bench-emulator")
        devices = _Child(_devices_main, site.buses, site.units_per_bus, name="bench-devices")
        agent: _Child | None = None
        try:
            url = emu.recv(60)
            ports = devices.recv(60)
            agent = _Child(_agent_main, url, str(key), ports, tmp_s, site, name="bench-agent")
            imports_rss_mb = agent.recv(90)
            pid = agent.proc.pid
            assert pid is not None
            time.sleep(warmup_s)      # the warm-up itself: discovery, first tokens, caches, page cache
            agent.conn.send("mark")
            rec0, bytes0 = agent.recv(60)
            io0 = _proc_write_bytes(pid)
            t0_ms, cpu0, w0 = time.time_ns() // 1_000_000, _proc_cpu_seconds(pid), time.monotonic()
            rss: list[float] = []
            while time.monotonic() - w0 < window_s:
                rss.append(_proc_rss_mb(pid))
                time.sleep(1.0)       # the RSS sampling period
            cpu1, w1, t1_ms = _proc_cpu_seconds(pid), time.monotonic(), time.time_ns() // 1_000_000
            agent.conn.send("mark")
            rec1, bytes1 = agent.recv(60)
            io1 = _proc_write_bytes(pid)
            pss, uss = _proc_pss_uss_mb(pid)
            emu.conn.send("collect")
            landed: list[tuple[int, int]] = emu.recv(60)
        finally:
            if agent is not None:
                agent.close()
            devices.close()
            emu.close()
    window = sorted(lat for at, lat in landed if t0_ms <= at < t1_ms)
    if not window:
        raise RuntimeError("no reading landed during the measurement window")
    q = statistics.quantiles(window, n=100, method="inclusive")
    return {
        "rss_max_mb": max(rss), "rss_median_mb": statistics.median(rss), "imports_rss_mb": imports_rss_mb,
        "pss_mb": pss, "uss_mb": uss,
        "cpu_share_pct": 100 * (cpu1 - cpu0) / (w1 - w0),
        "p50_s": q[49] / 1000, "p99_s": q[98] / 1000, "max_s": window[-1] / 1000,
        "rows_per_s": len(window) / ((t1_ms - t0_ms) / 1000), "rows": len(window), "window_s": w1 - w0,
        "committed_readings": rec1 - rec0, "committed_payload_bytes": bytes1 - bytes0, "written_bytes": io1 - io0,
    }


def measure_raw_poll(warmup_s: float, window_s: float, site: Site = REFERENCE) -> float:
    """CPU share of one core of raw pymodbus polling the site's devices (``_raw_poller_main``)."""
    devices = _Child(_devices_main, site.buses, site.units_per_bus, name="bench-devices")
    raw: _Child | None = None
    try:
        ports = devices.recv(60)
        raw = _Child(_raw_poller_main, ports, site.units_per_bus, site.poll_seconds, name="bench-raw-poller")
        raw.recv(90)
        pid = raw.proc.pid
        assert pid is not None
        time.sleep(warmup_s)
        cpu0, w0 = _proc_cpu_seconds(pid), time.monotonic()
        time.sleep(window_s)          # the measurement window itself
        return 100 * (_proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - w0)
    finally:
        if raw is not None:
            raw.close()
        devices.close()


def wear_rows(m: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """SD-card wear of one measured window: bytes written per reading, and per day."""
    from bench.wear import TARGET_RATIO, endurance_note
    n, payload, written = m["committed_readings"], m["committed_payload_bytes"], m["written_bytes"]
    per_day = written / m["window_s"] * 86400
    return [
        {"name": f"written to storage / payload committed ({label})", "ours": round(written / payload, 2),
         "raw": None, "ratio": None, "unit": "x payload", "target": f"<= {TARGET_RATIO:g}",
         "note": f"{written / n:,.0f} B written per reading of {payload / n:,.0f} B (WAL, checkpoints, "
                 f"everything the agent process wrote) over {m['window_s']:.0f} s, {n:,} readings"
                 + ("" if written / payload <= TARGET_RATIO else
                    f"; over {TARGET_RATIO:g}x: a commit writes about seven pages whatever it holds, and a site "
                    "that commits few readings at a time cannot spread them (commit_interval_ms: README, "
                    "SD-card wear)")},
        {"name": "  that is, per day", "ours": round(per_day / 1e9, 2), "raw": None, "ratio": None,
         "unit": "GB/day", "note": endurance_note(per_day)},
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Warm-up 30 s and a 120 s window (quick: 15 s and 30 s)."""
    warmup, window = (15.0, 30.0) if quick else (30.0, 120.0)
    m = measure(warmup, window)
    raw_cpu = measure_raw_poll(warmup / 3, window)
    site = REFERENCE.label()
    how = f"{m['window_s']:.0f} s steady window after {warmup:.0f} s warm-up"
    return [
        {"name": f"agent steady RSS, max of 1 s samples ({site})", "ours": round(m["rss_max_mb"], 1),
         "raw": None, "ratio": None, "unit": "MB", "target": "<= 55",
         "note": f"median {m['rss_median_mb']:.1f} MB; {m['imports_rss_mb']:.1f} MB of it is the interpreter "
                 f"and imports before the agent starts; at the end PSS {m['pss_mb']:.1f} MB, private "
                 f"{m['uss_mb']:.1f} MB; {how}"},
        {"name": "agent CPU share of one core (utime+stime / wall) vs raw pymodbus polling the same registers",
         "ours": round(m["cpu_share_pct"], 2), "raw": round(raw_cpu, 2),
         "ratio": round(raw_cpu / m["cpu_share_pct"], 2), "unit": "%", "target": "<= 2",
         "note": f"raw: pymodbus alone reading the same blocks of the same devices every second and dropping "
                 f"them, in its own process over a {window:.0f} s window (no decoding, outbox or upload): "
                 f"{raw_cpu:.2f} % of the 2 % budget is the Modbus library's; the rest "
                 f"({m['cpu_share_pct'] - raw_cpu:.2f} %) is decoding, records, commits, delivery and status"},
        {"name": "latency p50, reading stamp -> landed in the emulator store", "ours": round(m["p50_s"], 3),
         "raw": None, "ratio": None, "unit": "s",
         "note": "measured at the emulator: its process notes the wall time each streamed row is stored"},
        {"name": "latency p99, reading stamp -> landed in the emulator store", "ours": round(m["p99_s"], 3),
         "raw": None, "ratio": None, "unit": "s", "target": "<= 2", "note": f"max {m['max_s']:.3f} s"},
        {"name": "rows landed per second in the window (expected ~100)", "ours": round(m["rows_per_s"], 1),
         "raw": None, "ratio": None, "unit": "rows/s", "note": f"{m['rows']} rows"},
        *wear_rows(m, "this low-latency setting"),
    ]


def _main() -> None:
    from bench._common import console_line
    for row in run(quick="--quick" in sys.argv):
        print(console_line(row))


if __name__ == "__main__":
    _main()
