"""A feed whose profile does not match what the broker carries shows up in health, with an example topic.

The real agent runs in-process against the emulator over HTTP and a mosquitto started by the fixture; the
OpenDTU simulator publishes what the firmware does (the corpus template). Two feeds subscribe to the same
topics: one with the right profile, one with a wrong one (tasmota). Only the wrong one must be named.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.clock import ClockGuard
from agent.config import load_config
from agent.runtime import Agent
from agent.simulators.broker import Broker
from agent.simulators.mqtt_publishers import MqttPublisher
from agent.status import HealthPolicy
from tests.cli.conftest import write_config
from tests.peers.emulator import CLIENT_ID, USERNAME, make_keypair, running_emulator
from tests.peers.mosquitto import mosquitto_broker  # noqa: F401  (fixture)
from tests.waiting import wait_for

SERIAL = "114182912345"


async def test_a_feed_of_unrecognised_messages_is_degraded_with_an_example_topic(
        tmp_path: Path, mosquitto_broker: Broker) -> None:
    key, public = make_keypair(tmp_path)
    async with running_emulator(tmp_path, public_key_pem=public, client_id=CLIENT_ID, username=USERNAME) as emu, \
            MqttPublisher("opendtu", mosquitto_broker.url, (SERIAL,), interval_seconds=0.5,
                          client_id="feed-health-opendtu") as publisher:
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=0.2, extra=f"""
[clock]
assume_synced = true

[[mqtt]]
name = "right"
url = "{mosquitto_broker.url}"
profile = "opendtu"
client_id = "feed-health-right"

[[mqtt]]
name = "wrong"
url = "{mosquitto_broker.url}"
profile = "tasmota"
topics = ["solar/#"]
client_id = "feed-health-wrong"
""")
        # The shipped window is 3 minutes; the rule is the same with 2 s.
        agent = Agent(load_config(site.config), clock=ClockGuard(assume_synced=True),
                      health_policy=HealthPolicy(feed_no_reading_seconds=2.0))
        agent_task = asyncio.create_task(agent.run(), name="test[agent]")
        publish_task = asyncio.create_task(publisher.run(), name="test[opendtu]")
        try:
            await asyncio.wait_for(agent.ready.wait(), 10)

            def wrong_feed_named() -> bool:
                return any(r.startswith("feed_no_readings: feed=mqtt:wrong ") for r in agent.health().reasons)
            await wait_for(wrong_feed_named, 20, "health to name the feed with the wrong profile")
            await wait_for(lambda: emu.store.count() > 0, 20, "the right feed's readings to land")

            report = agent.health()
            reason = next(r for r in report.reasons if r.startswith("feed_no_readings: feed=mqtt:wrong "))
            assert f"example_topic=solar/{SERIAL}/" in reason, reason
            assert "why=unrecognised_topic" in reason and "check profile= and topics=" in reason, reason
            assert not any("feed=mqtt:right" in r for r in report.reasons), report.reasons
            assert report.to_json()["level"] == "degraded"

            feeds = {f["feed"]: f for f in (await agent.status())["feeds"]}
            wrong, right = feeds["mqtt:wrong"]["outcomes"], feeds["mqtt:right"]["outcomes"]
            assert wrong.get("unrecognised_topic", 0) > 0 and "reading" not in wrong, wrong
            assert right.get("reading", 0) > 0 and "unrecognised_topic" not in right, right
        finally:
            publish_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publish_task
            agent.request_stop()
            assert await asyncio.wait_for(agent_task, 25) == 0
