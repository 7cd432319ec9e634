"""MQTT payload profiles: which topics a device family uses and how its payloads become readings.

Pure decoding, no I/O: a ``Profile`` names the default subscriptions and builds a ``Decoder``,
a small state object fed one message at a time. ``PROFILES`` is the registry keyed by the
``profile`` value of an ``[[mqtt]]`` config section.

Decoder contract (see ``_base`` for the ack bookkeeping)::

    feed(topic, payload, now_ms, tag=None) -> list[Reading]   # may raise PayloadError only
    outcome -> str | None                                      # after feed: None if it fed a reading,
                                                               # else why not (NO_READING_REASONS)
    salvage() -> list[Reading]                                 # after feed raised: readings it completed first
    tick(now_ms) -> list[Reading]                              # cycles that went quiet
    release() -> list[tag]                                     # ack these after committing the above
    reset()                                                    # after a reconnect
    device_of(topic) -> str                                    # for health counters and logs

Each profile module also has ``recognises(topic) -> bool``, a pure test of whether a topic has that
family's shape (``Profile.recognises``): commissioning (``solar-agent scan``) uses it to tell which
profile a broker's traffic belongs to. ``generic`` recognises nothing.

Read-only: every decoder ignores command/write topics (``is_write_topic``), and the agent never
publishes anything except the Victron keepalive (``victron.keepalive_topic``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Protocol

from agent.config import MqttConfig
from agent.errors import ConfigError
from agent.records import IDENTITY_FIELDS, Reading, load_schema
from agent.sources.profiles import generic, opendtu, shelly, solarassistant, tasmota, victron
from agent.sources.profiles._base import (
    IGNORED,
    MALFORMED,
    NO_READING_REASONS,
    STALE,
    UNRECOGNISED_TOPIC,
    is_discovery_topic,
    is_write_topic,
)


class Decoder(Protocol):
    """Per-subscription decoder state. Not thread-safe: one owner (the source's task)."""

    def feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None = None) -> list[Reading]: ...

    @property
    def outcome(self) -> str | None: ...

    def salvage(self) -> list[Reading]: ...

    def tick(self, now_ms: int) -> list[Reading]: ...

    def release(self) -> list[Hashable]: ...

    def reset(self) -> None: ...

    def device_of(self, topic: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Profile:
    """A device family: its default subscriptions and its decoder factory."""

    name: str
    topics: Callable[[MqttConfig], list[str]]
    decoder: Callable[[MqttConfig], Decoder]
    recognises: Callable[[str], bool] = generic.recognises

    def default_topics(self, cfg: MqttConfig) -> list[str]:
        """``cfg.topics`` when given, else the family's usual subscriptions."""
        return list(cfg.topics) or self.topics(cfg)

    @staticmethod
    def read_only(topic: str) -> bool:
        """True when the topic is data the agent may treat (never a command/write topic)."""
        return not is_write_topic(topic)

    def new_decoder(self, cfg: MqttConfig) -> Decoder:
        return self.decoder(cfg)


def _generic(cfg: MqttConfig) -> Decoder:
    where = f"mqtt[{cfg.name}].fields"
    if not cfg.fields:
        raise ConfigError("<site config>", where, "the generic profile needs at least one field mapping",
                          hint='e.g. fields = { ac_power_w = "ENERGY.Power" }')
    known = set(load_schema().names) - set(IDENTITY_FIELDS)
    for name, path in cfg.fields:
        if name not in known:
            raise ConfigError("<site config>", f"{where}.{name}", "not a metric of the schema", value=name,
                              hint=f"one of {', '.join(sorted(known))}")
        if not path:
            raise ConfigError("<site config>", f"{where}.{name}", "empty JSON path")
    return generic.GenericDecoder(cfg.fields, device_id_path=cfg.device_id_path, time_path=cfg.time_path,
                                  topics=Profile.default_topics(PROFILES["generic"], cfg))


def _generic_topics(cfg: MqttConfig) -> list[str]:
    raise ConfigError("<site config>", f"mqtt[{cfg.name}].topics", "the generic profile has no default topics",
                      hint='set topics = ["site/+/telemetry"]')


PROFILES: Final[dict[str, Profile]] = {
    "opendtu": Profile("opendtu", lambda cfg: opendtu.default_topics(), lambda cfg: opendtu.OpenDtuDecoder(),
                       opendtu.recognises),
    "victron": Profile("victron", lambda cfg: victron.default_topics(cfg.portal_id),
                       lambda cfg: victron.VictronDecoder(), victron.recognises),
    "solarassistant": Profile("solarassistant", lambda cfg: solarassistant.default_topics(),
                              lambda cfg: solarassistant.SolarAssistantDecoder(cfg.name), solarassistant.recognises),
    "tasmota": Profile("tasmota", lambda cfg: tasmota.default_topics(), lambda cfg: tasmota.TasmotaDecoder(),
                       tasmota.recognises),
    "shelly": Profile("shelly", lambda cfg: shelly.default_topics(),
                      lambda cfg: shelly.ShellyDecoder(export=cfg.energy_direction == "export"), shelly.recognises),
    "generic": Profile("generic", _generic_topics, _generic, generic.recognises),
}

__all__ = ["IGNORED", "MALFORMED", "NO_READING_REASONS", "PROFILES", "STALE", "UNRECOGNISED_TOPIC", "Decoder",
           "Profile", "is_discovery_topic", "is_write_topic"]
