"""One fault stays in its part, and a stop always works: the agent as a process, with real peers.

Regression of issue #11: one MQTT message ``{"ENERGY":{"Power":<5,000 digits>}}`` on a generic
feed used to kill the agent (ValueError out of json.loads, TaskGroup cancelled everything), or,
with a larger config, leave a zombie: Modbus polling on, MQTT and the drain dead, health OK,
SIGTERM ignored. The message was never acked, so the broker replayed it at every start.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.emulator import Faults
from agent.runtime import STOP_DEADLINE_SECONDS
from agent.status import post_control
from tests.peers.site import OPENDTU_SERIAL, AgentProcess, Site, iso_ms, metric_value, outbox_meta
from tests.waiting import wait_for

POISON = b'{"ENERGY":{"Power":' + b"9" * 5000 + b"}}"
GENERIC_FEED = """
[[mqtt]]
name = "gen"
url = "{url}"
profile = "generic"
topics = ["gen/+/tele"]
client_id = "solar-agent-e2e-gen"
fields = {{ ac_power_w = "ENERGY.Power" }}
"""


def _publish(port: int, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"e2e-pub-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _rejected_rows(outbox: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute("SELECT source, reason, count FROM rejected_inputs")]  # type: ignore[misc]
    finally:
        conn.close()


async def _stop_within_deadline(agent: AgentProcess, *, clean: bool = False) -> float:
    """SIGTERM; exit 0 within the deadline. ``clean``: the stop logs exactly one line (issue #12)."""
    logged = len(agent.log_text().splitlines())
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    rc = await agent.wait(STOP_DEADLINE_SECONDS + 10)
    took = time.monotonic() - started
    assert rc == 0, agent.log_text()[-3000:]
    assert took < STOP_DEADLINE_SECONDS, f"stop took {took:.1f}s"
    if clean:
        after = agent.log_text().splitlines()[logged:]
        assert len(after) == 1 and "agent: stopped in" in after[0], after
    return took


async def test_a_poison_message_is_recorded_once_and_never_stops_the_site(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1,), tcp=True, mqtt=True) as site:
        assert site.broker is not None
        site.write_config(extra=GENERIC_FEED.format(url=site.broker.url))
        agent = await site.start_agent()
        await asyncio.to_thread(_publish, site.broker.port, "gen/dev1/tele", POISON)
        await wait_for(lambda: _rejected_rows(site.outbox_path), 15, "the poison message recorded")

        # The rest of the site goes on: Modbus RTU and TCP and the OpenDTU feed keep landing, each of them
        # with readings taken after the poison message.
        after = int(time.time()) * 1000        # whole seconds: an OpenDTU stamps its round in seconds
        await site.publish_cycle()
        wanted = {"SunSpecSim-SIM001001", "FloatSim-SIM002001", OPENDTU_SERIAL}

        def landed_after() -> set[str]:
            return {str(r.get("device_id")) for r in site.emu.store.rows()
                    if str(r.get("date_time") or "") >= iso_ms(after)}
        await wait_for(lambda: wanted <= landed_after(), 30, f"readings of {sorted(wanted)} after the poison message")
        status = await agent.status()
        assert status and status["outbox"]["rejected_inputs"] == 1
        assert status["health"]["level"] != "failed", status["health"]
        assert not any(c["restarts"] for c in status["components"].values()), status["components"]
        gen = next(f for f in status["feeds"] if f["feed"] == "mqtt:gen")
        assert gen["outcomes"] == {"malformed": 1}
        assert metric_value(await agent.metrics(), "solar_agent_source_inputs_total",
                            source="mqtt:gen", outcome="malformed") == 1
        # The zombie's symptoms are gone too: drain --now answers, SIGTERM ends it at once.
        assert await post_control(site.status_socket, "/control/drain?bulk=0") is not None
        await _stop_within_deadline(agent, clean=True)

        # Acked after it was recorded: a restart (kill -9 too) never sees it again.
        agent = await site.start_agent()
        await site.publish_cycle()
        n = site.emu.store.count()
        await wait_for(lambda: site.emu.store.count() > n, 20, "delivery after the restart")
        agent.kill()
        agent = await site.start_agent()
        await site.publish_cycle()
        n = site.emu.store.count()
        await wait_for(lambda: site.emu.store.count() > n, 20, "delivery after kill -9")
        status = await agent.status()
        assert status and "malformed" not in next(f for f in status["feeds"] if f["feed"] == "mqtt:gen")["outcomes"]
        await _stop_within_deadline(agent)
        assert _rejected_rows(site.outbox_path) == [("mqtt:gen", "malformed", 1)]


@contextmanager
def _black_hole() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a broker that hangs)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_sigterm_exits_0_within_the_deadline_in_every_injected_state(tmp_path: Path) -> None:
    bad_ca = tmp_path / "not-a-ca.pem"
    bad_ca.write_text("this is not a certificate\n")
    with _black_hole() as port:
        hung_broker = f"""
[[mqtt]]
name = "hung"
url = "mqtt://127.0.0.1:{port}"
profile = "generic"
topics = ["x/+/y"]
fields = {{ ac_power_w = "W" }}
"""
        # A feed whose TLS setup fails at every start: a component that keeps restarting.
        crashing = f"""
[[mqtt]]
name = "crashing"
url = "mqtts://127.0.0.1:{port}"
ca_file = "{bad_ca}"
profile = "generic"
topics = ["x/+/y"]
fields = {{ ac_power_w = "W" }}
"""
        async with Site(tmp_path, rtu_units=(1,)) as site:
            # A Data Cloud timeout longer than the drain's stop deadline: the hung request must be cut.
            site.write_config(extra=hung_broker + crashing, dc_timeout_seconds=120.0)
            agent = await site.start_agent()
            await wait_for(lambda: site.emu.store.count() > 0, 20, "first readings landed")

            async def restarting() -> bool:
                st = await agent.status()
                comps = (st or {}).get("components", {})
                return bool(comps.get("mqtt:crashing", {}).get("restarts"))
            await wait_for(restarting, 20, "the crashing feed restarted by its supervisor")
            status = await agent.status()
            assert status is not None
            reasons = " ".join(status["health"]["reasons"])
            assert "component_restarting: component=mqtt:crashing" in reasons
            assert status["components"]["drain.stream"]["state"] == "running"
            # The others keep delivering while it restarts.
            n = site.emu.store.count()
            await wait_for(lambda: site.emu.store.count() > n + 5, 20, "delivery beside the restarts")

            # And Data Cloud hangs: every request waits far longer than the stop deadline.
            site.emu.set_faults(Faults(latency_seconds=600.0))

            async def hanging() -> bool:
                return (await asyncio.to_thread(outbox_meta, site.outbox_path))["leased"] > 0
            await wait_for(hanging, 20, "a delivery hanging in Data Cloud (rows leased)")
            await _stop_within_deadline(agent)
            assert "agent: stopped" in agent.log_text()


HOSTILE = [b"9" * 5000, b"-" + b"9" * 5000, b"1e999", b"NaN", b"Infinity", b"[" * 10_000 + b"]" * 10_000,
           b'"12.5"', b"true", b"{}", b"[]"]          # (null is a valid "no value here")


async def test_a_hostile_storm_loses_nothing_and_invents_nothing(tmp_path: Path) -> None:
    """Poison and valid messages interleaved, with Modbus and OpenDTU traffic beside them: every
    valid reading lands once, every poison message is recorded once, and nothing comes back after
    a restart (all were acked)."""
    async with Site(tmp_path, rtu_units=(1,), mqtt=True) as site:
        assert site.broker is not None
        site.write_config(extra=GENERIC_FEED.format(url=site.broker.url))
        agent = await site.start_agent()
        ledger = site.watch()
        valid: list[str] = []
        messages: list[tuple[str, bytes]] = []
        for n, value in enumerate(HOSTILE):
            messages.append((f"gen/bad{n}/tele", b'{"ENERGY":{"Power":' + value + b'},"ts":1}'))
            messages.append((f"gen/bad{n}/tele", b"\xff\xfe" + value[:100]))
            device = f"ok{n}"
            messages.append((f"gen/{device}/tele", f'{{"ENERGY":{{"Power":{100 + n}}}}}'.encode()))
            valid.append(device)
            await site.publish_cycle()
        for topic, payload in messages:
            await asyncio.to_thread(_publish, site.broker.port, topic, payload)
        poison = len(HOSTILE) * 2
        await wait_for(lambda: sum(r[2] for r in _rejected_rows(site.outbox_path)) >= poison, 20,
                       "every poison recorded")
        await wait_for(lambda: set(valid) <= {r.get("device_id") for r in site.emu.store.rows()}, 20,
                       "every valid generic message landed")
        site.silence()
        await site.wait_delivered(ledger, within=30)
        rec = site.reconcile(ledger)
        assert rec.ok, rec
        assert rec.dead_letters == 0
        await _stop_within_deadline(agent)
        # Nothing was left unacked: a restart gets no redelivery (no new rows, no recount).
        landed = site.emu.store.count()
        agent = await site.start_agent()
        await site.publish_cycle()
        await wait_for(lambda: site.emu.store.count() > landed, 20, "the next OpenDTU cycle")
        status = await agent.status()
        assert status is not None
        gen = next(f for f in status["feeds"] if f["feed"] == "mqtt:gen")
        assert gen["messages"] == 0, gen
        await _stop_within_deadline(agent)
        rows = _rejected_rows(site.outbox_path)
        assert len(rows) == poison and all(count == 1 for _, _, count in rows), rows
