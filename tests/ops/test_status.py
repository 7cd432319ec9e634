"""The status server over a real unix socket and real loopback TCP, and the health policy table."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.errors import AgentError, ConfigError
from agent.metrics import AgentMetrics
from agent.status import (
    REASON_CODES,
    DeviceCheck,
    FeedCheck,
    HealthInputs,
    HealthPolicy,
    HealthReport,
    StatusProvider,
    StatusServer,
    evaluate_health,
    fetch_status,
)

TOKEN = "s3cr3t-status-token-0123456789"


class FakeProvider:
    """A provider at the seam: fixed answers the test can change."""

    def __init__(self) -> None:
        self.report = HealthReport(True, [])
        self.metrics = AgentMetrics()
        self.fail_status = False

    async def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("provider broke")
        return {"running": True, "version": "0.1.0", "outbox": {"path": Path("/var/lib/x.db"), "rows": 3}}

    def health(self) -> HealthReport:
        return self.report

    def metrics_text(self) -> str:
        return self.metrics.render()


def _unix_session(path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))


@pytest.fixture
def provider() -> FakeProvider:
    p = FakeProvider()
    assert isinstance(p, StatusProvider)
    return p


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    f = tmp_path / "status.token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    return f


async def test_unix_socket_routes(tmp_path: Path, provider: FakeProvider) -> None:
    sock = tmp_path / "run" / "status.sock"  # parent does not exist yet
    async with StatusServer(provider, socket_path=sock):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        async with _unix_session(sock) as s:
            async with s.get("http://agent/health") as r:
                assert (r.status, await r.json()) == (200, {"ok": True, "level": "ok", "reasons": []})
            provider.report = HealthReport(False, ["clock_unsynced: x"])
            async with s.get("http://agent/health") as r:
                assert (r.status, await r.json()) == (
                    503, {"ok": False, "level": "degraded", "reasons": ["clock_unsynced: x"]})
            async with s.get("http://agent/status") as r:
                body = await r.json()
                assert r.status == 200
                assert body["outbox"] == {"path": "/var/lib/x.db", "rows": 3}
                assert body["health"]["ok"] is False
            provider.metrics.received_events_total.inc(5, source="modbus:bus0")
            async with s.get("http://agent/metrics") as r:
                assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                assert 'solar_agent_received_events_total{source="modbus:bus0"} 5' in await r.text()
            async with s.get("http://agent/nope") as r:
                assert r.status == 404
            provider.fail_status = True
            async with s.get("http://agent/status") as r:
                assert r.status == 500
    assert not sock.exists()


async def test_stale_socket_replaced_live_one_refused(tmp_path: Path, provider: FakeProvider) -> None:
    sock = tmp_path / "status.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # a crash leaves the file behind with nobody listening
    assert sock.is_socket()
    async with StatusServer(provider, socket_path=sock):
        assert await fetch_status(sock) is not None
        with pytest.raises(ConfigError, match="another process"):
            async with StatusServer(provider, socket_path=sock):
                pass
        # The refused second server did not remove the first one's socket.
        assert await fetch_status(sock) is not None


async def test_regular_file_in_the_way_is_refused(tmp_path: Path, provider: FakeProvider) -> None:
    path = tmp_path / "status.sock"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        async with StatusServer(provider, socket_path=path):
            pass
    assert path.read_text() == "not a socket"


async def test_tcp_requires_the_token(tmp_path: Path, provider: FakeProvider, token_file: Path) -> None:
    sock = tmp_path / "s.sock"
    server = StatusServer(provider, socket_path=sock, listen="127.0.0.1:0", token_file=token_file)
    async with server:
        assert server.tcp_port
        url = f"http://127.0.0.1:{server.tcp_port}"
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
                for route in ("/health", "/status", "/metrics"):
                    async with s.get(url + route, headers=headers) as r:
                        assert r.status == 401, (route, headers)
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with s.get(url + "/health", headers=auth) as r:
                assert r.status == 200
            async with s.get(url + "/metrics", headers=auth) as r:
                assert "solar_agent_outbox_events 0" in await r.text()
        # The unix socket needs no token: its file mode is the guard.
        async with _unix_session(sock) as s, s.get("http://agent/health") as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("listen", "token", "match"),
    [
        ("127.0.0.1:0", None, "needs a bearer token"),
        ("127.0.0.1:0", "short", "at least 16"),
        ("127.0.0.1:0", "missing", "cannot read"),
        ("127.0.0.1", TOKEN, "host:port"),
        ("127.0.0.1:99999", TOKEN, "host:port"),
    ],
)
async def test_tcp_refuses_to_start_without_a_usable_token(
    tmp_path: Path, provider: FakeProvider, listen: str, token: str | None, match: str
) -> None:
    token_path: Path | None = None
    if token is not None:
        token_path = tmp_path / "t"
        if token != "missing":
            token_path.write_text(token)
    sock = tmp_path / "s.sock"
    with pytest.raises(ConfigError, match=match):
        async with StatusServer(provider, socket_path=sock, listen=listen, token_file=token_path):
            pass
    assert not sock.exists()  # nothing half-started


async def test_tcp_port_in_use(tmp_path: Path, provider: FakeProvider, token_file: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot listen"):
            listen = f"127.0.0.1:{port}"
            async with StatusServer(provider, socket_path=None, listen=listen, token_file=token_file):
                pass
    finally:
        taken.close()


async def test_fetch_status(tmp_path: Path, provider: FakeProvider) -> None:
    sock = tmp_path / "status.sock"
    assert await fetch_status(sock) is None  # absent: not running
    refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    refused.bind(str(sock))
    refused.close()
    assert await fetch_status(sock) is None  # stale file, nobody listening
    sock.unlink()
    async with StatusServer(provider, socket_path=sock):
        status = await fetch_status(sock)
        assert status is not None and status["running"] is True and status["health"]["ok"] is True
        provider.fail_status = True
        with pytest.raises(AgentError, match="HTTP 500"):
            await fetch_status(sock)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_fetch_status_without_permission(tmp_path: Path, provider: FakeProvider) -> None:
    sock = tmp_path / "status.sock"
    async with StatusServer(provider, socket_path=sock):
        sock.chmod(0)
        with pytest.raises(AgentError, match="no permission"):
            await fetch_status(sock)


# -- health policy ---------------------------------------------------------------------------------

NOW = 1_767_225_600_000
START = NOW - 3_600_000


def _inputs(**kw: Any) -> HealthInputs:
    base: dict[str, Any] = {"now_ms": NOW, "started_ms": START}
    base.update(kw)
    return HealthInputs(**base)


@pytest.mark.parametrize(
    ("inputs", "codes"),
    [
        (_inputs(), []),
        # A device polled every 10 s is silent after 3 missed polls (30 s).
        (_inputs(devices=[DeviceCheck("inv1", 10, NOW - 30_000)]), []),
        (_inputs(devices=[DeviceCheck("inv1", 10, NOW - 30_001)]), ["device_silent"]),
        (_inputs(devices=[DeviceCheck("inv1", 10, None)]), ["device_silent"]),
        # Never read, but the agent only just started: grace period.
        (_inputs(started_ms=NOW - 5_000, devices=[DeviceCheck("inv1", 10, None)]), []),
        (_inputs(devices=[DeviceCheck("mqtt-dtu", None, None)]), []),  # push feed: not checked
        (_inputs(oldest_undelivered_ms=NOW - 3_600_000), []),
        (_inputs(oldest_undelivered_ms=NOW - 3_601_000), ["delivery_lagging"]),
        (_inputs(auth_ok=None), []),
        (_inputs(auth_ok=True), []),
        (_inputs(auth_ok=False, auth_error="invalid_grant"), ["auth_failing"]),
        (_inputs(outbox_bytes=900, outbox_max_bytes=1000), []),
        (_inputs(outbox_bytes=901, outbox_max_bytes=1000), ["outbox_nearly_full"]),
        (_inputs(outbox_bytes=10**9, outbox_max_bytes=0), []),  # no cap
        (_inputs(clock_synced=False), ["clock_unsynced"]),
        # A device with its breaker open after 3 failed reads is unreachable (not also silent).
        (_inputs(devices=[DeviceCheck("inv1", 10, NOW - 60_000, "backoff", "timeout: x", 3)]), ["device_unreachable"]),
        (_inputs(devices=[DeviceCheck("inv1", 10, NOW - 1_000, "backoff", "timeout: x", 1)]), []),   # one timeout
        (_inputs(devices=[DeviceCheck("inv1", 10, None, "down", "connection: refused", 5)]), ["device_unreachable"]),
        # A push device that spoke, then stopped for more than 10 minutes.
        (_inputs(devices=[DeviceCheck("dtu", None, NOW - 600_000)]), []),
        (_inputs(devices=[DeviceCheck("dtu", None, NOW - 600_001)]), ["device_silent"]),
        # Feeds: a broker down after the grace period; messages without any reading for 3 minutes.
        (_inputs(feeds=[FeedCheck("mqtt:a", False, False, "refused")]), ["broker_disconnected"]),
        (_inputs(started_ms=NOW - 10_000, feeds=[FeedCheck("mqtt:a", False, False)]), []),
        (_inputs(feeds=[FeedCheck("mqtt:a", True, True, "", NOW - 1_000, NOW - 180_001, "x/y", "malformed")]),
         ["feed_no_readings"]),
        (_inputs(feeds=[FeedCheck("mqtt:a", True, True, "", NOW - 1_000, NOW - 179_000, "x/y", "malformed")]), []),
        (_inputs(feeds=[FeedCheck("mqtt:a", True, True, "", NOW - 200_000, None)]), []),   # quiet feed: not this
        (_inputs(dead_letters_recent=1), ["dead_letters_recent"]),
        (_inputs(dropped_recent=5), ["readings_dropped"]),
        (_inputs(components_restarting=[("drain.stream", "RuntimeError: x")]), ["component_restarting"]),
        (_inputs(components_failed=[("mqtt:a", "RuntimeError: x")]), ["component_failed"]),
        (
            _inputs(devices=[DeviceCheck("a", 10, NOW), DeviceCheck("b", 5, NOW - 60_000)],
                    oldest_undelivered_ms=NOW - 7_200_000, auth_ok=False,
                    outbox_bytes=95, outbox_max_bytes=100, clock_synced=False),
            ["device_silent", "delivery_lagging", "auth_failing", "outbox_nearly_full", "clock_unsynced"],
        ),
    ],
)
def test_health_policy_table(inputs: HealthInputs, codes: list[str]) -> None:
    report = evaluate_health(inputs)
    assert [r.split(":", 1)[0] for r in report.reasons] == codes
    assert report.ok is (not codes)


@pytest.mark.parametrize(("inputs", "level"), [
    (_inputs(), "ok"),
    (_inputs(clock_synced=False, dropped_recent=1), "degraded"),
    (_inputs(components_restarting=[("x", "")]), "degraded"),
    (_inputs(components_failed=[("x", "")], clock_synced=False), "failed"),
    (_inputs(auth_ok=False), "failed"),
    (_inputs(schema_mismatch="#: extraneous key [x]"), "failed"),
    # Only the gateway's own status records wait; readings flow: a look, not a failure.
    (_inputs(status_schema_mismatch="solar_gateway_status: not found"), "degraded"),
])
def test_health_levels(inputs: HealthInputs, level: str) -> None:
    assert evaluate_health(inputs).to_json()["level"] == level


def test_feed_reason_gives_an_example_topic_and_a_hint() -> None:
    (reason,) = evaluate_health(_inputs(feeds=[FeedCheck("mqtt:dtu", True, True, "", NOW, None,
                                                         "solar/1164a00cbf56/0/power", "unrecognised_topic")])).reasons
    assert reason.startswith("feed_no_readings: feed=mqtt:dtu last_reading=never "
                             "example_topic=solar/1164a00cbf56/0/power why=unrecognised_topic hint=")
    assert "profile" in reason


def test_health_reasons_name_the_detail() -> None:
    report = evaluate_health(
        _inputs(devices=[DeviceCheck("inv7", 10, NOW - 95_000)], auth_ok=False, auth_error="invalid_grant"),
        HealthPolicy(silent_polls=2),
    )
    assert report.reasons == [
        "device_silent: device=inv7 last_reading=95s ago expected_every=10s",
        "auth_failing: error=invalid_grant",
    ]


def test_every_reason_code_is_explained_to_the_technician() -> None:
    guide = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in REASON_CODES:
        assert f"| `{code}` |" in guide, f"the README's operations guide does not explain {code}"


class ControlProvider(FakeProvider):
    """Also takes operator actions (SupportsControl)."""

    async def flush_now(self, *, bulk: bool = False, wait_seconds: float = 10.0) -> dict[str, Any]:
        return {"rows_before": 0, "rows_after": 0, "bulk_requested": bulk}

    async def requeue_dead_letters(self, event_ids: Any) -> int:
        return 0 if event_ids is None else len(event_ids)


HOSTILE_BODIES = [b"", b"\xff\xfe", b"[" * 100_000, b'{"ids": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                  b'{"ids": [1, 2]}', b'{"all": "yes"}', b'{"ids": "x"}', b'{"ids": []}', b"null", b"9" * 5000,
                  b'{"all": true, "ids": ["a"]}', b'{"ids": ["' + b"a" * 1_000_000 + b'"]}', b"NaN"]


async def test_hostile_requests_get_an_answer_and_the_server_goes_on(tmp_path: Path) -> None:
    provider = ControlProvider()
    errors: list[str] = []
    sock = tmp_path / "status.sock"
    async with StatusServer(provider, socket_path=sock, on_error=errors.append), _unix_session(sock) as s:
        for body in HOSTILE_BODIES:
            async with s.post("http://agent/control/requeue", data=body) as r:
                assert r.status in (200, 400, 413), (body[:40], r.status)
        for query in ("bulk=2", "bulk=" + "1" * 10_000, "bulk=%ff", "x=1", "bulk"):
            async with s.post(f"http://agent/control/drain?{query}") as r:
                assert r.status in (200, 400), (query, r.status)
        for path in ("/%00", "/health/../status", "/" + "a" * 10_000, "/control", "/metrics?x=" + "y" * 5000):
            async with s.get(f"http://agent{path}") as r:
                assert r.status < 500, (path, r.status)
        provider.fail_status = True                           # the provider itself fails: 500, that request only
        async with s.get("http://agent/status") as r:
            assert r.status == 500 and "provider broke" in (await r.json())["error"]
        provider.fail_status = False
        async with s.get("http://agent/health") as r:
            assert r.status == 200
        async with s.get("http://agent/status") as r:
            assert r.status == 200
    assert errors == ["RuntimeError"]
