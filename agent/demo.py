"""`solar-agent demo`: the whole mission on one machine, with nothing configured.

It starts the Data Cloud emulator; a virtual RS-485 bus with two simulated SunSpec inverters and two
devices of the corpus (``tests/cases/sunspec``: a KOSTAL whose model chain ends in a single 0x0000, and a
three-phase IEEE 1547 inverter with models 701 and 714); a Modbus TCP endpoint with a float-model inverter
and a corpus device whose SunS sits at 0 behind a silent 40000; an OpenDTU and a Shelly feed on a local
mosquitto when one is installed (replaying the corpus's firmware templates); and the agent with a
temporary outbox. It plays a scenario (streaming, a short outage, a long outage that crosses the bulk
threshold, the link back) with a live progress line; then reconciles what the sources produced with what
landed in the emulator's table. Exit 0 only when nothing was lost, invented or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.clock import ClockGuard
from agent.config import (
    AgentConfig,
    DataCloudConfig,
    DrainConfig,
    FleetConfig,
    ModbusBusConfig,
    ModbusDeviceConfig,
    MqttConfig,
    OutboxConfig,
    SiteConfig,
    StatusConfig,
)
from agent.emulator import Emulator, EmulatorSettings, Faults
from agent.fleet import STATUS_OBJECT
from agent.keys import generate_keypair
from agent.records import EncodedRecord
from agent.runtime import Agent
from agent.simulators.broker import Broker, find_mosquitto, free_port
from agent.simulators.mqtt_publishers import MqttPublisher
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator

log = logging.getLogger(__name__)

OPENDTU_SERIAL = "114182912345"
SHELLY_PREFIX = "shellyplusplugs-e86beae1a0b8"
# Corpus devices served as they are on the demo's buses (unit id -> tests/cases/sunspec/<case>).
RTU_CORPUS = {3: "kostal_end_single_zero", 4: "der701_714_three_phase"}
TCP_CORPUS = {2: "base0_silent_at_40000"}
CLIENT_ID = "solar-agent-demo"
USERNAME = "agent@demo.example"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start_s: float
    outage: bool


def scenario(duration_s: float) -> tuple[list[Phase], float]:
    """The phases of a run of ``duration_s`` seconds and the bulk threshold that makes them work.

    The short outage stays under the bulk threshold (backlog, then streaming catch-up); the long
    one crosses it (bulk backfill of the old part while fresh readings stream).
    """
    d = duration_s
    bulk_after = 0.25 * d
    phases = [
        Phase("streaming", 0.0, False),
        Phase("short outage", 0.20 * d, False),
        Phase("catch-up", 0.30 * d, False),
        Phase("long outage", 0.42 * d, True),
        Phase("link back: bulk backfill", 0.75 * d, False),
    ]
    phases[1] = Phase("short outage", 0.20 * d, True)
    return phases, bulk_after


@dataclass(slots=True)
class Reconciliation:
    produced: int
    landed: int
    lost: int
    invented: int
    duplicate_readings: int
    replayed_writes: int
    dead_letters: int
    streamed: int
    bulk: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.invented == 0 and self.duplicate_readings == 0

    def lines(self) -> list[str]:
        verdict = "PASS" if self.ok else "FAIL"
        return [
            "",
            "Reconciliation (sources -> outbox -> Data Cloud emulator table)",
            f"  produced readings   {self.produced:>7}",
            f"  landed rows         {self.landed:>7}   (streamed {self.streamed}, bulk {self.bulk})",
            f"  lost                {self.lost:>7}",
            f"  invented            {self.invented:>7}",
            f"  duplicate readings  {self.duplicate_readings:>7}   (same device and time under two ids)",
            f"  replayed writes     {self.replayed_writes:>7}   (re-sent after a lost answer; upserted, harmless)",
            f"  dead letters        {self.dead_letters:>7}",
            f"{verdict}: {'nothing lost, nothing invented, nothing duplicated' if self.ok else 'see above'}",
        ]


class Demo:
    """One demo run in ``workdir``."""

    def __init__(self, workdir: Path, duration_s: float, out: TextIO, *, with_mqtt: bool = True) -> None:
        self.workdir = workdir
        self.duration_s = duration_s
        self.out = out
        self.with_mqtt = with_mqtt
        self.committed: set[str] = set()
        # The gateway's own status records (agent/fleet.py): event id -> written during an outage?
        self.status_committed: dict[str, bool] = {}
        self._in_outage = False
        self.agent: Agent | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _on_committed(self, records: Sequence[EncodedRecord]) -> None:
        self.committed.update(r.event_id for r in records if r.object is None)
        for r in records:
            if r.object == STATUS_OBJECT:
                self.status_committed.setdefault(r.event_id, self._in_outage)

    def _config(self, emu: Emulator, key_path: Path, rtu_port: str, tcp_port: int, broker: Broker | None,
                bulk_after: float) -> AgentConfig:
        mqtt: tuple[MqttConfig, ...] = ()
        if broker is not None:
            mqtt = (MqttConfig("opendtu", broker.url, "opendtu", client_id="solar-agent-demo-opendtu"),
                    MqttConfig("shelly", broker.url, "shelly", client_id="solar-agent-demo-shelly"))
        return AgentConfig(
            source_file="<demo defaults>",
            site=SiteConfig("demo-site", "001DEMO0000000001", "Demo PV plant"),
            datacloud=DataCloudConfig(login_url=emu.url, client_id=CLIENT_ID, username=USERNAME,
                                      private_key_path=key_path, source_name="solar_agent", ca_file=emu.ca_file),
            outbox=OutboxConfig(path=self.workdir / "outbox.db"),
            modbus=(
                ModbusBusConfig("rs485", "rtu", tuple(ModbusDeviceConfig(u) for u in (1, 2, *RTU_CORPUS)),
                                port=rtu_port, baudrate=9600, timeout_seconds=0.5, poll_interval_seconds=0.25),
                ModbusBusConfig("lan", "tcp", tuple(ModbusDeviceConfig(u) for u in (1, *TCP_CORPUS)),
                                host="127.0.0.1", tcp_port=tcp_port, timeout_seconds=0.5, poll_interval_seconds=0.25),
            ),
            mqtt=mqtt,
            # Small batches so that a demo-sized backlog is worth a bulk job (the age trigger wants a
            # backlog of 20 streaming requests); a real site keeps the 190 KB default.
            drain=DrainConfig(flush_interval_seconds=1.0, batch_max_bytes=2_500,
                              bulk_after_seconds=bulk_after, bulk_min_rows=1_000_000,
                              max_requests_per_second=20.0, retry_max_seconds=2.0, reconnect_jitter_seconds=1.0),
            status=StatusConfig(socket_path=self.workdir / "status.sock"),
            # About 16 gateway status records per run, a few of them during the long outage.
            fleet=FleetConfig(interval_seconds=max(1.0, round(self.duration_s / 16, 1))),
        )

    async def run(self) -> int:
        phases, bulk_after = scenario(self.duration_s)
        self.say(f"solar-agent demo: {self.duration_s:.0f}s scenario in {self.workdir}")
        keys = generate_keypair(self.workdir / "keys")
        settings = EmulatorSettings(public_key_pem=keys.public_key_pem, client_id=CLIENT_ID, username=USERNAME,
                                    db_path=self.workdir / "datacloud.db", bulk_processing_seconds=1.0)
        async with contextlib.AsyncExitStack() as stack:
            emu = await stack.enter_async_context(Emulator(settings))
            self.say(f"  Data Cloud emulator     {emu.url}")
            pair = stack.enter_context(PtyPair(self.workdir / "ttySIM", self.workdir / "ttyAGENT"))
            rtu_sim = SunSpecSimulator((1, 2), seed=1, corpus=RTU_CORPUS)
            tcp_sim = SunSpecSimulator((1,), seed=2, float_model=True, manufacturer="FloatSim", corpus=TCP_CORPUS)
            await stack.enter_async_context(rtu_sim.serve_rtu(str(pair.a)))
            tcp = await stack.enter_async_context(tcp_sim.serve_tcp())
            self.say(f"  SunSpec RTU bus         units 1, 2 (simulated), 3 KOSTAL chain end, 4 DER 701/714 "
                     f"(corpus) on {pair.b}")
            self.say(f"  SunSpec TCP endpoint    127.0.0.1:{tcp.port}: unit 1 (float model 113), "
                     "unit 2 SunS at 0 behind a silent 40000 (corpus)")
            assert tcp.port is not None, "serve_tcp sets the port while serving"
            broker = await self._start_mqtt(stack)
            cfg = self._config(emu, keys.private_key_path, pair.b, tcp.port, broker, bulk_after)
            agent = self.agent = Agent(cfg, on_committed=self._on_committed, clock=ClockGuard(assume_synced=True))
            agent_task = asyncio.create_task(agent.run(), name="demo[agent]")
            stack.push_async_callback(self._stop_agent, agent, agent_task)
            await asyncio.wait_for(agent.ready.wait(), 30)
            self.say(f"  agent                   outbox {cfg.outbox.path}, bulk after {bulk_after:.0f}s of backlog")
            self.say("")
            await self._play(emu, phases)
            return await self._finish(emu, agent)

    async def _start_mqtt(self, stack: contextlib.AsyncExitStack) -> Broker | None:
        binary = find_mosquitto()
        if not self.with_mqtt or binary is None:
            self.say("  MQTT feeds              skipped (no mosquitto binary; apt-get install mosquitto)")
            return None
        (self.workdir / "mqtt").mkdir()
        broker = Broker(binary, self.workdir / "mqtt", free_port())
        await asyncio.to_thread(broker.start)
        stack.callback(broker.stop)
        for profile, device in (("opendtu", OPENDTU_SERIAL), ("shelly", SHELLY_PREFIX)):
            publisher = await stack.enter_async_context(
                MqttPublisher(profile, broker.url, (device,), interval_seconds=1.0, client_id=f"demo-sim-{profile}"))
            task = asyncio.create_task(publisher.run(), name=f"demo[{profile}]")
            stack.push_async_callback(_cancel, task)
        self.say(f"  MQTT feeds              {broker.url} (mosquitto): OpenDTU inverter {OPENDTU_SERIAL}, "
                 f"Shelly plug {SHELLY_PREFIX}")
        return broker

    async def _play(self, emu: Emulator, phases: list[Phase]) -> None:
        start = time.monotonic()
        current: Phase | None = None
        next_line = 0.0
        while (elapsed := time.monotonic() - start) < self.duration_s:
            phase = [p for p in phases if p.start_s <= elapsed][-1]
            if phase is not current:
                current = phase
                emu.set_faults(Faults(outage=phase.outage))
                self._in_outage = phase.outage
                self.say(f"--- {elapsed:5.1f}s  {phase.name}{'  (Data Cloud unreachable)' if phase.outage else ''}")
            if elapsed >= next_line:
                await self._progress(elapsed, phase)
                next_line += 2.0
            await asyncio.sleep(0.25)  # the scenario's clock tick
        emu.set_faults(Faults())
        self._in_outage = False

    async def _progress(self, elapsed: float, phase: Phase) -> None:
        agent = self.agent
        assert agent is not None and agent.outbox is not None and agent.drain is not None
        stats = await agent.outbox.stats()
        d = agent.drain
        self.say(f"[{elapsed:5.1f}s] produced {len(self.committed):6}  outbox {stats.rows:6}  "
                 f"streamed {d.stream_state.sent_total:6}  bulk {d.bulk_state.sent_total:6}  "
                 f"dead {stats.dead_letters:3}  lane {d.lane}")

    async def _finish(self, emu: Emulator, agent: Agent) -> int:
        self.say("--- stopping the sources, delivering what is left")
        await agent.stop_sources()
        assert agent.outbox is not None and agent.drain is not None
        agent.drain.flush_now()
        deadline = time.monotonic() + max(60.0, self.duration_s)
        while time.monotonic() < deadline:
            stats = await agent.outbox.stats()
            if (stats.rows == 0 and len(emu.store.keys()) >= len(self.committed)
                    and set(self.status_committed) <= emu.store.keys(STATUS_OBJECT)):
                break
            agent.drain.flush_now()
            await asyncio.sleep(0.25)  # waiting for delivery, with a deadline
        # The reporter keeps writing while the agent runs: judge the status records written so far.
        status_written = dict(self.status_committed)
        stats = await agent.outbox.stats()
        rec = self.reconcile(emu, stats.dead_letters, agent)
        for line in rec.lines():
            self.say(line)
        if rec.bulk == 0:
            self.say("note: the bulk lane was not used in this run (a slow machine?); try a longer --duration")
        status_ok = self.show_status_rows(emu, status_written)
        return 0 if rec.ok and status_ok else 1

    def show_status_rows(self, emu: Emulator, committed: dict[str, bool]) -> bool:
        """The site's solar_gateway_status rows as Data Cloud holds them; True when each landed exactly once."""
        rows = sorted(emu.store.rows(obj=STATUS_OBJECT), key=lambda r: str(r.get("date_time")))
        writes = emu.store.write_counts(STATUS_OBJECT)
        self.say("")
        self.say(f"Gateway status rows in Data Cloud ({STATUS_OBJECT}, one per interval)")
        self.say("  INTERVAL START             HEALTH    BACKLOG  LANE         STREAM LAST OK             WRITTEN")
        for r in rows:
            when = "during outage" if committed.get(str(r["event_id"])) else ""
            self.say(f"  {r.get('date_time')!s:26} {r.get('health_level')!s:9} {r.get('backlog_rows')!s:>7}  "
                     f"{r.get('delivery_lane')!s:12} {r.get('stream_last_success') or '-'!s:26} {when}")
        landed = {str(r["event_id"]) for r in rows}
        lost = set(committed) - landed
        outage = sum(1 for eid, out in committed.items() if out and eid in landed)
        self.say(f"  {len(landed)} rows, {outage} written during the outage and delivered after it; "
                 f"lost {len(lost)}, replayed writes {sum(n - 1 for n in writes.values() if n > 1)}")
        return not lost

    def reconcile(self, emu: Emulator, dead_letters: int, agent: Agent) -> Reconciliation:
        rows = emu.store.rows()
        landed = {str(r["event_id"]) for r in rows}
        readings = {(r.get("device_id"), r.get("date_time")) for r in rows}
        writes = emu.store.write_counts()
        assert agent.drain is not None
        return Reconciliation(
            produced=len(self.committed), landed=len(landed),
            lost=len(self.committed - landed), invented=len(landed - self.committed),
            duplicate_readings=len(rows) - len(readings),
            replayed_writes=sum(n - 1 for n in writes.values() if n > 1),
            dead_letters=dead_letters, streamed=agent.drain.stream_state.sent_total,
            bulk=agent.drain.bulk_state.sent_total,
        )

    async def _stop_agent(self, agent: Agent, task: asyncio.Task[int]) -> None:
        agent.request_stop()
        await asyncio.wait_for(task, 30)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_demo(duration_s: float, out: TextIO, *, workdir: Path | None = None, with_mqtt: bool = True) -> int:
    """Entry point of `solar-agent demo`."""
    for noisy in ("pymodbus", "aiohttp.access", "agent.emulator"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    logging.getLogger("agent").setLevel(logging.WARNING)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(Demo(workdir, duration_s, out, with_mqtt=with_mqtt).run())
    with tempfile.TemporaryDirectory(prefix="solar-agent-demo-") as tmp:
        return asyncio.run(Demo(Path(tmp), duration_s, out, with_mqtt=with_mqtt).run())
