"""A whole site for end-to-end tests: emulator, simulators, a config file on disk, the agent process.

    async with Site(tmp_path, rtu_units=(1, 2), tcp=True, mqtt=True) as site:
        site.write_config(flush_interval_seconds=0.5)
        agent = await site.start_agent()          # `python -m agent run --config FILE`, stdout to a file
        watch = site.watch()                       # every event id the agent committed
        ...
        agent.kill()                               # SIGKILL by pid; the fixture teardown does it too
        rec = site.reconcile(watch)          # lost / invented / duplicates, from peers' own books

Everything the agent is judged by comes from the peers, not from the agent: the emulator's table
(what landed), the MQTT publisher's log (what was published, so what must land), and a ledger
table that a trigger fills inside the agent's own append transactions (what the agent committed,
even when the process dies right after).
The emulator runs in the test's event loop: a test waits by polling with ``await`` and a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from agent.config import AgentConfig
from agent.emulator import Emulator, EmulatorSettings
from agent.simulators.broker import Broker, find_mosquitto, free_port
from agent.simulators.mqtt_publishers import Expected, MqttPublisher
from agent.simulators.ptypair import Mangle, PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from agent.status import fetch_status, post_control
from tests.peers.emulator import CLIENT_ID, USERNAME, make_keypair
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SITE_ID = "e2e-site"
OPENDTU_SERIAL = "114182912345"
# Corpus devices (tests/cases/sunspec/) on the site's buses by default, so every e2e run meets real shapes:
# a KOSTAL chain that ends in one 0x0000 register, a 701/714 DER inverter, and SunS at 0 behind a silent 40000.
RTU_CORPUS: dict[int, str] = {11: "kostal_end_single_zero", 12: "der701_714_three_phase"}
TCP_CORPUS: dict[int, str] = {2: "base0_silent_at_40000"}


def iso_ms(time_ms: int) -> str:
    """``yyyy-MM-ddTHH:mm:ss.SSSZ``, written here independently of the agent's encoder."""
    dt = datetime.datetime.fromtimestamp(time_ms // 1000, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{time_ms % 1000:03d}Z"


# -- the outbox, read-only --------------------------------------------------------------------------


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None, timeout=5)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def outbox_rows(path: Path) -> dict[str, tuple[str, str]]:
    """event_id -> (device_id, date_time) of every queued row (blocking; call via to_thread)."""
    if not path.exists():
        return {}
    conn = _ro(path)
    try:
        out = {}
        for eid, payload in conn.execute("SELECT event_id, payload FROM events"):
            rec = json.loads(payload)
            out[eid] = (rec.get("device_id"), rec.get("date_time"))
        return out
    finally:
        conn.close()


def outbox_jobs(path: Path) -> list[tuple[int, str | None, str]]:
    """(lease_id, job_id, state) of the bulk journal (blocking)."""
    if not path.exists():
        return []
    conn = _ro(path)
    try:
        return [tuple(r) for r in conn.execute("SELECT lease_id, job_id, state FROM bulk_jobs")]  # type: ignore[misc]
    finally:
        conn.close()


def outbox_meta(path: Path) -> dict[str, int]:
    conn = _ro(path)
    try:
        conn.execute("BEGIN")
        row = conn.execute("SELECT dropped_total, leased FROM meta").fetchone()
        # Counted from the tables, not from the agent's running totals: the test judges those. Except
        # leases: a stream lease lives in the agent's memory, and only the totals row records it.
        rows, bulk_leased = conn.execute("SELECT count(*), count(lease_id) FROM events").fetchone()
        leased = max(row[1], bulk_leased)
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"rows": rows, "leased": leased, "dead_letters": dead, "dropped_total": row[0]}


_LEDGER_DDL = (
    # object: NULL for readings, else the schema object (the gateway's status records).
    "CREATE TABLE IF NOT EXISTS e2e_committed (event_id TEXT PRIMARY KEY, device_id TEXT, date_time TEXT, "
    "object TEXT)",
    # CAST: payload is a BLOB of JSON text; json_extract must read it as text, never fail the insert.
    "CREATE TRIGGER IF NOT EXISTS e2e_committed_ledger AFTER INSERT ON events BEGIN "
    "INSERT OR IGNORE INTO e2e_committed VALUES (NEW.event_id, "
    "json_extract(CAST(NEW.payload AS TEXT), '$.device_id'), "
    "json_extract(CAST(NEW.payload AS TEXT), '$.date_time'), NEW.object); END",
)


async def prepare_outbox(path: Path) -> None:
    """Create the outbox (the agent's own migrations) and add a test ledger of every committed row.

    The ledger is a trigger-fed table, written in the agent's own append transaction: it holds
    exactly the rows the agent committed, whatever happens to them later (acked, dropped, or the
    process killed), which no outside sampler could see when a row is acked within milliseconds.
    """
    from agent.config import OutboxConfig
    from agent.outbox import Outbox

    async with Outbox(OutboxConfig(path=path)):
        pass

    def ddl() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for stmt in _LEDGER_DDL:
                conn.execute(stmt)
        finally:
            conn.close()
    await asyncio.to_thread(ddl)


def ledger_rows(path: Path, obj: str | None = None) -> dict[str, tuple[str, str]]:
    """event_id -> (device_id, date_time) of every row of one object ever committed (blocking).

    ``obj`` None: the readings; else a schema object by name (``solar_gateway_status``).
    """
    cond, args = ("object IS NULL", ()) if obj is None else ("object = ?", (obj,))
    conn = _ro(path)
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            f"SELECT event_id, device_id, date_time FROM e2e_committed WHERE {cond}", args)}
    finally:
        conn.close()


class OutboxWatcher:
    """Reads the ledger of committed rows (see ``prepare_outbox``); ``seen`` is event_id -> (device, time)
    of the readings, ``seen_status`` event_id -> (None, interval start) of the gateway status records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, tuple[str, str]] = {}
        self.seen_status: dict[str, tuple[str, str]] = {}

    async def snapshot(self) -> dict[str, tuple[str, str]]:
        self.seen.update(await asyncio.to_thread(ledger_rows, self.path))
        self.seen_status.update(await asyncio.to_thread(ledger_rows, self.path, "solar_gateway_status"))
        return self.seen


# -- the agent process ------------------------------------------------------------------------------


class AgentProcess:
    """``python -m agent run --config FILE`` with stdout+stderr in ``log_path``; stopped by pid."""

    def __init__(self, config_path: Path, log_path: Path, status_socket: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.status_socket = status_socket
        self._log = log_path.open("ab")
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config_path)],
                                     cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (no-op when it already exited)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.to_thread(self.proc.wait, timeout)
        self._log.close()
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any] | None:
        with contextlib.suppress(Exception):
            return await fetch_status(self.status_socket, timeout_seconds=2)
        return None

    async def metrics(self) -> str:
        connector = aiohttp.UnixConnector(path=str(self.status_socket))
        async with (aiohttp.ClientSession(connector=connector) as session,
                    session.get("http://solar-agent/metrics") as resp):
            return await resp.text()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        async def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"agent exited rc={self.proc.returncode}:\n{self.log_text()[-3000:]}")
            st = await self.status()
            return bool(st and st.get("running"))
        await wait_for(ready, timeout, "the agent's status socket to answer running=true", every=0.1)


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        lname, _, lab = key.partition("{")
        if lname != name:
            continue
        got = ",".join(sorted(p for p in lab.rstrip("}").split(",") if p))
        if not labels or got == want:
            total += float(value)
    return total


# -- reconciliation ---------------------------------------------------------------------------------


@dataclass
class Reconciliation:
    produced: int
    landed: int
    lost: list[str]
    invented: list[str]
    duplicate_readings: int
    replayed_writes: int
    still_queued: int
    dead_letters: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.invented and self.duplicate_readings == 0 and self.still_queued == 0

    def __str__(self) -> str:
        return (f"produced={self.produced} landed={self.landed} lost={len(self.lost)} {self.lost[:5]} "
                f"invented={len(self.invented)} {self.details.get('invented_rows', [])[:3]} "
                f"duplicates={self.duplicate_readings} "
                f"replayed={self.replayed_writes} queued={self.still_queued} dead={self.dead_letters}")


def reconcile(emu: Emulator, committed: dict[str, tuple[str, str]], *, mqtt_expected: list[Expected] = (),
              outbox_path: Path | None = None, dropped: set[str] | None = None) -> Reconciliation:
    """Compare what was produced with the emulator's table.

    ``committed``: event_id -> (device_id, date_time) the agent committed (seen in the outbox or
    reported by ``on_committed``). ``mqtt_expected``: what the MQTT publisher sent, each of which
    must have landed as a row with that device and time. ``dropped``: event ids the outbox dropped
    on purpose (full policy); they must not be counted as lost.
    """
    rows = emu.store.rows()
    landed = {str(r["event_id"]): (r.get("device_id"), r.get("date_time")) for r in rows}
    readings = {v for v in landed.values()}
    must = dict(committed)
    lost = sorted(eid for eid in must if eid not in landed and eid not in (dropped or set()))
    for exp in mqtt_expected:
        if exp.time_ms is not None and (exp.device_id, iso_ms(exp.time_ms)) not in readings:
            lost.append(f"mqtt:{exp.device_id}@{iso_ms(exp.time_ms)}")
    expected_keys = {(e.device_id, iso_ms(e.time_ms)) for e in mqtt_expected if e.time_ms is not None}
    invented = sorted(eid for eid, key in landed.items() if eid not in must and key not in expected_keys)
    writes = emu.store.write_counts()
    queued = dead = 0
    if outbox_path is not None and outbox_path.exists():
        meta = outbox_meta(outbox_path)
        queued, dead = meta["rows"], meta["dead_letters"]
    return Reconciliation(
        produced=len(must), landed=len(landed), lost=lost, invented=invented,
        duplicate_readings=len(rows) - len(readings),
        replayed_writes=sum(n - 1 for n in writes.values() if n > 1), still_queued=queued, dead_letters=dead,
        details={"invented_rows": [r for r in rows if str(r["event_id"]) in set(invented)]},
    )


# -- the site ---------------------------------------------------------------------------------------


class Site:
    """Emulator + RTU bus (pty pair) + optional TCP inverter + optional mosquitto/OpenDTU feed.

    Args:
        workdir: tmp_path of the test.
        rtu_units: live units on the RS-485 bus (empty: no RTU bus).
        dead_units: configured on the bus but silent.
        tcp: one float-model inverter on Modbus TCP.
        mqtt: a mosquitto broker and an OpenDTU publisher the test drives (``publish_cycle``).
        mangle: byte mangler for the pty relay (garbage on the serial line).
        emulator: EmulatorSettings overrides (bulk_processing_seconds, ...).
        rtu_corpus, tcp_corpus: unit id -> SunSpec corpus case served on that bus as it is ({} for none;
            the RTU ones only when the bus has live units).
    """

    def __init__(self, workdir: Path, *, rtu_units: tuple[int, ...] = (1, 2), dead_units: tuple[int, ...] = (),
                 tcp: bool = False, mqtt: bool = False, mangle: Mangle | None = None,
                 emulator: dict[str, Any] | None = None, rtu_corpus: dict[int, str] | None = None,
                 tcp_corpus: dict[int, str] | None = None) -> None:
        self.workdir = workdir
        self.rtu_units = rtu_units
        self.rtu_corpus = dict(RTU_CORPUS if rtu_corpus is None else rtu_corpus) if rtu_units else {}
        self.tcp_corpus = dict(TCP_CORPUS if tcp_corpus is None else tcp_corpus)
        self.dead_units = dead_units
        self.tcp = tcp
        self.mqtt = mqtt
        self.mangle = mangle
        self.emulator_overrides = emulator or {}
        # A unix socket path must stay under 108 bytes: keep it out of the long pytest tmp path.
        self.sockdir = Path(tempfile.mkdtemp(prefix="sa-e2e-"))
        self.status_socket = self.sockdir / "status.sock"
        self.outbox_path = workdir / "outbox.db"
        self.config_path = workdir / "site.toml"
        self.rtu_sim: SunSpecSimulator | None = None
        self.tcp_sim: SunSpecSimulator | None = None
        self.pair: PtyPair | None = None
        self.broker: Broker | None = None
        self.publisher: MqttPublisher | None = None
        self.agents: list[AgentProcess] = []
        self._silenced = False
        self._stack = contextlib.AsyncExitStack()
        self._last_t = 0
        self.emu: Emulator

    async def __aenter__(self) -> Site:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        key_path, public = make_keypair(self.workdir)
        self.key_path = key_path
        settings: dict[str, Any] = {"public_key_pem": public, "client_id": CLIENT_ID, "username": USERNAME,
                                    "db_path": self.workdir / "landed.sqlite"}
        settings.update(self.emulator_overrides)
        self.emu = await self._stack.enter_async_context(Emulator(EmulatorSettings(**settings)))
        if self.rtu_units or self.dead_units:
            self.pair = self._stack.enter_context(
                PtyPair(self.workdir / "ttySIM", self.workdir / "ttyAGENT", mangle=self.mangle))
            self.rtu_sim = SunSpecSimulator(self.rtu_units, seed=1, dead_units=self.dead_units,
                                            corpus=self.rtu_corpus)
            await self._stack.enter_async_context(self.rtu_sim.serve_rtu(str(self.pair.a)))
        if self.tcp:
            self.tcp_sim = SunSpecSimulator((1,), seed=2, float_model=True, manufacturer="FloatSim",
                                            corpus=self.tcp_corpus)
            await self._stack.enter_async_context(self.tcp_sim.serve_tcp())
        if self.mqtt:
            binary = find_mosquitto()
            if binary is None:
                import pytest
                pytest.skip("mosquitto not installed")
            (self.workdir / "mqtt").mkdir()
            self.broker = Broker(binary, self.workdir / "mqtt", free_port())
            await asyncio.to_thread(self.broker.start)
            self._stack.callback(self.broker.stop)
            self.publisher = await self._stack.enter_async_context(
                MqttPublisher("opendtu", self.broker.url, (OPENDTU_SERIAL,), client_id="e2e-opendtu-sim"))

    async def __aexit__(self, *exc: object) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.kill()
        await self._stack.aclose()
        for p in self.sockdir.iterdir():
            p.unlink(missing_ok=True)
        self.sockdir.rmdir()

    # -- config ---------------------------------------------------------------------------------
    def config_text(self, *, flush_interval_seconds: float = 0.5, bulk_after_seconds: float = 3600.0,
                    bulk_min_rows: int = 1_000_000, retry_max_seconds: float = 1.0,
                    poll_interval_seconds: float = 0.25, max_requests_per_second: float = 50.0,
                    outbox_max_bytes: int = 2_000_000_000, when_full: str = "drop_oldest",
                    min_free_bytes: int = 0, extra_drain: str = "", extra: str = "",
                    dc_timeout_seconds: float = 5.0, sources: bool = True, fleet_interval_seconds: float = 0) -> str:
        """The site file. ``sources=False``: without the site's own buses and feed (``extra`` brings them,
        e.g. the blocks ``solar-agent scan`` printed). Gateway status records are off unless
        ``fleet_interval_seconds`` says otherwise."""
        lines = [
            "[site]", f'id = "{SITE_ID}"', 'customer_id = "001E2E0000000001"', "",
            "[outbox]", f'path = "{self.outbox_path}"', f"max_bytes = {outbox_max_bytes}",
            f"min_free_bytes = {min_free_bytes}", f'when_full = "{when_full}"', "",
            "[datacloud]", f'login_url = "{self.emu.url}"', f'client_id = "{CLIENT_ID}"',
            f'username = "{USERNAME}"', f'private_key_path = "{self.key_path}"', 'source_name = "solar_agent"',
            f"timeout_seconds = {dc_timeout_seconds}", "",
            "[drain]", f"flush_interval_seconds = {flush_interval_seconds}",
            f"bulk_after_seconds = {bulk_after_seconds}", f"bulk_min_rows = {bulk_min_rows}",
            f"retry_max_seconds = {retry_max_seconds}", f"max_requests_per_second = {max_requests_per_second}",
            "reconnect_jitter_seconds = 0.5", extra_drain, "",
            "[status]", f'socket_path = "{self.status_socket}"', "",
            # Off unless a test asks: a status record at a 5-minute boundary must not land in a
            # test that counts requests or rows. tests/e2e/test_fleet.py turns it on.
            "[fleet]", f"interval_seconds = {fleet_interval_seconds}", "",
        ]
        if "clock" in {f.name for f in dataclasses.fields(AgentConfig)}:
            # This host's kernel reports an unsynchronised clock (a container): trust the wall clock,
            # or every reading is held back for re-stamping and nothing is delivered.
            lines += ["[clock]", "assume_synced = true", ""]
        if self.pair is not None and sources:
            lines += ["[[modbus]]", 'name = "rs485"', 'transport = "rtu"', f'port = "{self.pair.b}"',
                      "timeout_seconds = 0.3", f"poll_interval_seconds = {poll_interval_seconds}", ""]
            for u in (*self.rtu_units, *self.rtu_corpus, *self.dead_units):
                lines += ["[[modbus.devices]]", f"unit_id = {u}", ""]
        if self.tcp_sim is not None and sources:
            lines += ["[[modbus]]", 'name = "lan"', 'transport = "tcp"', 'host = "127.0.0.1"',
                      f"tcp_port = {self.tcp_sim.port}", "timeout_seconds = 0.5",
                      f"poll_interval_seconds = {poll_interval_seconds}", ""]
            for u in (1, *self.tcp_corpus):
                lines += ["[[modbus.devices]]", f"unit_id = {u}", ""]
        if self.broker is not None and sources:
            lines += ["[[mqtt]]", 'name = "opendtu"', f'url = "{self.broker.url}"', 'profile = "opendtu"',
                      'client_id = "solar-agent-e2e-opendtu"', ""]
        lines.append(extra)           # more [[mqtt]] or [[modbus]] sections, appended last
        return "\n".join(lines)

    def write_config(self, **kw: Any) -> Path:
        self.config_path.write_text(self.config_text(**kw))
        return self.config_path

    # -- agent ----------------------------------------------------------------------------------
    async def start_agent(self, *, ready: bool = True) -> AgentProcess:
        if not self.outbox_path.exists():
            await prepare_outbox(self.outbox_path)
        n = len(self.agents)
        agent = AgentProcess(self.config_path, self.workdir / f"agent-{n}.log", self.status_socket)
        self.agents.append(agent)
        if ready:
            await agent.wait_ready()
        return agent

    def watch(self) -> OutboxWatcher:
        """The committed-rows ledger (the outbox was prepared with it before the first start)."""
        return OutboxWatcher(self.outbox_path)

    # -- mqtt -----------------------------------------------------------------------------------
    async def publish_cycle(self) -> list[Expected]:
        """One OpenDTU cycle stamped with a fresh, strictly increasing unix second."""
        assert self.publisher is not None
        t = max(int(time.time()), self._last_t + 1)
        self._last_t = t
        return await self.publisher.publish_cycle(t)

    def mqtt_expected(self) -> list[Expected]:
        return self.publisher.expected() if self.publisher is not None else []

    def silence(self) -> None:
        """Every simulated inverter stops answering, so the backlog can drain to zero (the agent keeps running)."""
        for sim in (self.rtu_sim, self.tcp_sim):
            if sim is not None:
                for u in sim.unit_ids:
                    sim.set_dead(u)
        self._silenced = True

    # -- waits ----------------------------------------------------------------------------------
    def landed_keys(self) -> set[tuple[str, str]]:
        return {(r.get("device_id"), r.get("date_time")) for r in self.emu.store.rows()}

    async def wait_delivered(self, watcher: OutboxWatcher | None, within: float = 30.0,
                             mqtt: bool = True) -> None:
        """Until the outbox is empty, everything committed landed, and every MQTT cycle landed.

        Call ``silence()`` first, or the sources keep the outbox from ever being empty.
        """
        if self._silenced and self.agents and self.agents[-1].alive():
            await self._commit_last_polls(self.agents[-1], within)
        async def done() -> bool:
            if watcher is not None:
                await watcher.snapshot()
            if not self.outbox_path.exists():
                return False
            meta = await asyncio.to_thread(outbox_meta, self.outbox_path)
            if meta["rows"]:
                return False
            keys = self.emu.store.keys()
            if watcher is not None and not set(watcher.seen) <= keys:
                return False
            if mqtt and self.publisher is not None:
                landed = self.landed_keys()
                return all((e.device_id, iso_ms(e.time_ms)) in landed
                           for e in self.mqtt_expected() if e.time_ms is not None)
            return True
        try:
            await wait_for(done, within, "everything committed to land and the outbox to empty", every=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await self.diagnosis()}") from None

    async def _commit_last_polls(self, agent: AgentProcess, within: float) -> None:
        """Until the agent's last readings of the silenced devices are committed.

        A Modbus reading waits up to ``outbox.commit_interval_ms`` for its group commit, in the
        agent's memory: the outbox can be empty, and everything committed landed, while it waits.
        Once every device's last poll failed, its readings are all queued; ``drain --now``
        commits them (and sends them) at once.
        """
        last: list[object] = []

        async def every_device_failing() -> bool:
            st = await agent.status()
            devices = [d for d in (st or {}).get("devices", []) if str(d.get("source")).startswith("modbus")]
            last[:] = [(d.get("device"), d.get("state"), d.get("readings"), d.get("last_reading_age_s"))
                       for d in devices] if st is not None else ["no status answer"]
            return st is not None and all(d.get("state") in ("backoff", "down") for d in devices)
        try:
            await wait_for(every_device_failing, within, "every silenced device's last poll to fail", every=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ndevices (name, state, readings, last reading age): {last}\n"
                                 f"{await self.diagnosis()}") from None
        await post_control(agent.status_socket, "/control/drain?bulk=0")

    async def diagnosis(self) -> str:
        """What a timed-out wait needs to be understood: the outbox's totals, its bulk journal, the
        emulator's landed count, and the tail of the last agent's log."""
        lines = []
        if self.outbox_path.exists():
            lines.append(f"outbox meta: {await asyncio.to_thread(outbox_meta, self.outbox_path)}")
            lines.append(f"bulk journal: {await asyncio.to_thread(outbox_jobs, self.outbox_path)}")
        lines.append(f"emulator: {self.emu.store.count()} rows landed")
        if self.agents:
            tail = self.agents[-1].log_path.read_text(errors="replace").splitlines()[-40:]
            lines += [f"last agent log ({self.agents[-1].log_path.name}), last {len(tail)} lines:", *tail]
        return "\n".join(lines)

    def reconcile(self, watcher: OutboxWatcher, dropped: set[str] | None = None) -> Reconciliation:
        return reconcile(self.emu, watcher.seen, mqtt_expected=self.mqtt_expected(),
                         outbox_path=self.outbox_path, dropped=dropped)
