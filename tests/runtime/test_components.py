"""Kill any one component: health names it within seconds, the others keep delivering, a stop works.

The agent runs in-process against the emulator over real HTTP, with a real Modbus TCP inverter
(the simulator) as its source. Each supervised component gets one injected exception, raised from
inside its own loop (an instance method replaced for one call), never from outside the task.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ClockGuard
from agent.config import load_config
from agent.emulator import Emulator
from agent.runtime import STOP_DEADLINE_SECONDS, Agent
from agent.simulators.sunspec_device import SunSpecSimulator
from agent.status import fetch_status
from tests.cli.conftest import write_config
from tests.peers.emulator import CLIENT_ID, USERNAME, make_keypair, running_emulator
from tests.waiting import wait_for


@asynccontextmanager
async def _agent(tmp_path: Path, *, landing: bool = True, **emulator: Any) -> AsyncIterator[tuple[Agent, Emulator]]:
    """A running agent with one Modbus TCP inverter, against the emulator (``emulator``: its settings).

    ``landing``: wait until the first readings landed before handing it over.
    """
    key, public = make_keypair(tmp_path)
    sim = SunSpecSimulator((1,), seed=3, float_model=True, manufacturer="SupSim")
    async with running_emulator(tmp_path, public_key_pem=public, client_id=CLIENT_ID, username=USERNAME,
                                **emulator) as emu, sim.serve_tcp():
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=0.2, extra=f"""
[[modbus]]
name = "lan"
transport = "tcp"
host = "127.0.0.1"
tcp_port = {sim.port}
timeout_seconds = 0.5
poll_interval_seconds = 0.1
[[modbus.devices]]
unit_id = 1
""")
        agent = Agent(load_config(site.config), clock=ClockGuard(assume_synced=True))
        task = asyncio.create_task(agent.run(), name="test[agent]")
        try:
            await asyncio.wait_for(agent.ready.wait(), 10)
            if landing:
                await wait_for(lambda: emu.store.count() > 0, 15, "first readings landed")
            yield agent, emu
        finally:
            agent.request_stop()
            assert await asyncio.wait_for(task, STOP_DEADLINE_SECONDS) == 0


def _fail_once(obj: object, name: str) -> None:
    """Replace ``obj.name`` by a wrapper that raises the first time it is called, then delegates."""
    original: Callable[..., Any] = getattr(obj, name)
    fired = False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        if not fired:
            fired = True
            raise RuntimeError(f"injected fault in {name}")
        return original(*args, **kwargs)

    setattr(obj, name, wrapper)


class _KickFailingOnce:
    """Stands in for the bulk lane's private wake-up, which only the bulk loop waits on."""

    def __init__(self, kick: Any) -> None:
        self._kick = kick
        self._fired = False

    def set(self) -> None:
        self._kick.set()

    async def wait(self, seconds: float) -> bool:
        if not self._fired:
            self._fired = True
            raise RuntimeError("injected fault in the bulk loop")
        result: bool = await self._kick.wait(seconds)
        return result


def _break_bulk_loop(agent: Agent) -> None:
    drain = agent.drain
    assert drain is not None
    drain._bulk_kick = _KickFailingOnce(drain._bulk_kick)  # type: ignore[assignment]


# component name -> how to make its own loop raise once
INJECT: dict[str, Callable[[Agent], None]] = {
    "modbus:lan": lambda a: _fail_once(a._run.sources[0], "_cycle"),                 # type: ignore[union-attr]
    "drain.stream": lambda a: _fail_once(a._run.drain, "drain_stream_once"),         # type: ignore[union-attr]
    "drain.bulk": _break_bulk_loop,
    "clock.holdback": lambda a: _fail_once(a._run.holdback, "release"),              # type: ignore[union-attr]
    "notify": lambda a: _fail_once(a.notifier, "status"),
    # The status server's failure in the field: its socket file removed under it (a cleanup of /run).
    "status": lambda a: a.cfg.status.socket_path.unlink(),
}


@pytest.mark.parametrize("component", sorted(INJECT))
async def test_one_component_fails_health_names_it_and_the_rest_delivers(tmp_path: Path, component: str) -> None:
    async with _agent(tmp_path) as (agent, emu):
        INJECT[component](agent)
        sup = agent.supervisor
        assert sup is not None

        def restarted() -> bool:
            return any(c.name == component and c.restarts == 1 for c in sup.components())
        await wait_for(restarted, 15, f"{component} restarted by its supervisor")
        reasons = agent.health().reasons
        assert any(r.startswith(f"component_restarting: component={component} error=")
                   and ("injected fault" in r or "socket" in r) for r in reasons), reasons
        assert agent.health().to_json()["level"] == "degraded"
        status = await agent.status()
        assert status["components"][component]["restarts"] == 1
        async def answers() -> bool:        # the technician can ask again (after the restart)
            return bool(await fetch_status(agent.cfg.status.socket_path))
        await wait_for(answers, 15, "the status socket answering")
        # Everything else goes on, and so does the component after its restart.
        n = emu.store.count()
        await wait_for(lambda: emu.store.count() > n + 5, 15, "delivery after the fault")
        await wait_for(lambda: all(c.state == "running" for c in sup.components()), 15, "all running again")
        others = [c for c in sup.components() if c.name != component]
        assert not any(c.restarts for c in others), others


async def test_a_component_given_up_fails_health_and_withholds_the_watchdog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")         # pings every 0.2 s while healthy
        async with _agent(tmp_path) as (agent, emu):
            sup = agent.supervisor
            assert sup is not None
            sup._max_restarts = 1                             # give up after the second failure
            sup._base = sup._cap = 0.01

            async def broken() -> None:
                raise RuntimeError("always")
            holdback = agent._run.holdback                     # type: ignore[union-attr]
            monkeypatch.setattr(holdback, "release", broken)
            await wait_for(lambda: sup.gave_up(), 15, "the supervisor gave up on clock.holdback")
            report = agent.health()
            assert report.to_json()["level"] == "failed"
            assert any(r.startswith("component_failed: component=clock.holdback") for r in report.reasons)
            assert "supervisor:clock.holdback" in agent.watchdog.stale()
            # No more WATCHDOG=1 from now on, while delivery still goes on.
            loop = asyncio.get_running_loop()
            while True:         # drain what was sent before the give-up
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break
            n = emu.store.count()
            await wait_for(lambda: emu.store.count() > n + 3, 15, "delivery beside the failed component")
            seen = b""
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    while b"WATCHDOG=1" not in seen:
                        seen += await loop.sock_recv(sock, 4096)


@pytest.mark.parametrize("damage", ["binary", "directory", "unreadable", "huge", "deep"])
async def test_a_reloaded_file_that_breaks_the_loader_is_refused_and_nothing_stops(
        tmp_path: Path, damage: str) -> None:
    async with _agent(tmp_path) as (agent, emu):
        path = Path(agent.cfg.source_file)
        good = path.read_bytes()
        before = agent.cfg
        if damage == "binary":
            path.write_bytes(b"\xff\xfe\x00\x01" * 1000)
        elif damage == "directory":
            path.unlink()
            path.mkdir()
        elif damage == "unreadable":
            path.chmod(0)
            if os.access(path, os.R_OK):      # root reads anything: make it unreadable another way
                path.unlink()
                path.symlink_to(path)         # a symlink loop: ELOOP on open
        elif damage == "huge":
            path.write_bytes(good + b"\n# " + b"x" * 50_000_000 + b"\n")
        elif damage == "deep":
            path.write_bytes(good + b"\nx = " + b"[" * 100_000 + b"]" * 100_000 + b"\n")
        agent.request_reload()
        n = emu.store.count()
        await wait_for(lambda: emu.store.count() > n + 3, 15, "delivery goes on after the refused reload")
        assert agent.cfg is before
        assert agent._run is not None and agent._run.cfg is before
        sup = agent.supervisor
        assert sup is not None and not any(c.restarts for c in sup.components())


async def test_the_running_agent_posts_to_the_object_endpoint(tmp_path: Path) -> None:
    """A connector's endpoint may differ from the schema's object name (issue #13): the agent's URL
    uses datacloud.object_endpoint, its schema lookup object_name."""
    key, public = make_keypair(tmp_path)
    endpoint = "solar_panel_event_a1b2c3"
    async with running_emulator(tmp_path, public_key_pem=public, client_id=CLIENT_ID, username=USERNAME,
                                object_endpoints=((endpoint, "solar_panel_event"),)) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=0.2)
        text = site.config.read_text().replace('source_name = "solar_agent"',
                                               f'source_name = "solar_agent"\nobject_endpoint = "{endpoint}"')
        site.config.write_text(text)
        agent = Agent(load_config(site.config), source_factory=lambda cfg: [], clock=ClockGuard(assume_synced=True))
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.ready.wait(), 10)
            from agent.records import Reading
            await agent._emit([Reading("inv-endpoint", 1_780_000_000_000, "test", {"ac_power_w": 1.0})])
            await wait_for(lambda: emu.store.count() == 1, 15, "the reading landed through the endpoint")
        finally:
            agent.request_stop()
            assert await asyncio.wait_for(task, STOP_DEADLINE_SECONDS) == 0


async def test_a_schema_mismatch_is_a_failed_health_with_the_reason_and_no_row_is_lost(tmp_path: Path) -> None:
    from tests.drain.test_schema_guard import _older_schema

    async with _agent(tmp_path, landing=False, schema_path=_older_schema(tmp_path), fire_and_forget=True) \
            as (agent, emu):
        await wait_for(lambda: agent.health().level == "failed", 15, "health failed")
        (reason,) = [r for r in agent.health().reasons if r.startswith("schema_mismatch:")]
        assert "power_factor_pct" in reason and "upload the schema" in reason
        # Readings keep being committed while delivery is stopped; none is sent to be dropped.
        await wait_for(lambda: _rows_above(agent, 5), 15, "readings queued while stopped")
        status = await agent.status()
        assert status["lane"] == "stopped" and status["outbox"]["dead_letters"] == 0
        assert emu.store.count() == 0 and emu.dropped.total == 0


async def _rows_above(agent: Agent, n: int) -> bool:
    st = await agent.status()
    return int(st["outbox"]["rows"]) > n
