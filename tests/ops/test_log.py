"""Redaction of secrets in log lines, journald priority prefixes, and rate limiting."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from agent.log import REDACTED, RateLimitedLogger, redact, setup_logging

JWT = (
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIzTVZHOU9rIiwic3ViIjoiYWdlbnRAZXhhbXBsZS5jb20ifQ"
    ".Zm9vYmFyLXNpZ25hdHVyZS1ieXRlcy1oZXJl"
)
SF_TOKEN = "00D5g000004ABCD!AQ0AQHx8t3Y1pCq.yYp_2ZbZxV7u9k"
PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    "-----END PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"POST /services/data headers={{'Authorization': 'Bearer {SF_TOKEN}'}}", SF_TOKEN),
        (f"authorization: bearer {JWT}", JWT),
        (f"exchange failed body=grant_type=jwt-bearer&assertion={JWT}&x=1", JWT),
        (f"token response {{\"access_token\": \"{SF_TOKEN}\", \"instance_url\": \"https://x\"}}", SF_TOKEN),
        ("mqtt connect password=hunter2-secret user=tech", "hunter2-secret"),
        ("config {'username': 'u', 'password': 'pa ss,word'}", "pa ss,word"),
        ("refresh_token=5Aep861TSESvWeug_xvFHRBTTbf; path=/", "5Aep861TSESvWeug_xvFHRBTTbf"),
        (f"jwt assembled {JWT} for sub=agent", JWT),
        (f"key file content: {PEM} (end)", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"),
        ("truncated -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAvery", "MIIEowIBAAKCAQEAvery"),
        ("a360 token=" + "x" * 30 + "." + "y" * 30 + "." + "z" * 30, "x" * 30),
    ],
)
def test_secrets_are_masked(line: str, secret: str) -> None:
    cleaned = redact(line)
    assert secret not in cleaned
    assert "[REDACTED" in cleaned
    assert redact(cleaned) == cleaned  # idempotent: the filter and the formatter both apply it


@pytest.mark.parametrize(
    "line",
    [
        "drain sent lane=stream rows=250 bytes=180231 status=202",
        "device timeout device=inv1 bus=bus0 hint=check the RS-485 wiring",
        "login_url=https://login.salesforce.com instance=https://acme.my.salesforce.com",
        "private_key_path=/etc/solar-agent/private.key password_file=/etc/solar-agent/mqtt.pw",
        "token refreshed expires_in=7200",
        "version 0.1.0 python=3.11.2",
    ],
)
def test_ordinary_lines_are_untouched(line: str) -> None:
    assert redact(line) == line


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_journal_lines_carry_priority_and_are_redacted(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging(logging.DEBUG, stream=out, environ={"JOURNAL_STREAM": "8:12345"})
    log = logging.getLogger("agent.test")
    log.info("drain sent lane=%s rows=%d", "stream", 3)
    log.warning("auth failed token=%s hint=%s", SF_TOKEN, "check the connected app")
    log.debug("debug detail")
    try:
        raise ValueError(f"server said Bearer {SF_TOKEN}")
    except ValueError:
        log.exception("request failed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<6>agent.test: drain sent lane=stream rows=3"
    assert lines[1] == f"<4>agent.test: auth failed token={REDACTED} hint=check the connected app"
    assert lines[2] == "<7>agent.test: debug detail"
    assert lines[3] == "<3>agent.test: request failed"
    assert all(line.startswith("<3>") for line in lines[3:])  # traceback lines keep the priority
    assert SF_TOKEN not in out.getvalue()
    assert "ValueError: server said Bearer" in lines[-1]


def test_terminal_lines_have_time_and_level(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging(stream=out, environ={})
    logging.getLogger("agent.x").error("boom password=%s", "p4ss")
    logging.getLogger("agent.x").debug("not shown at INFO")
    (line,) = out.getvalue().splitlines()
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z") and stamp[10] == "T"
    assert (level, rest) == ("ERROR", f"agent.x: boom password={REDACTED}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_logger(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLogger(logging.getLogger("agent.rl"), 60, clock=clock)
    caplog.set_level(logging.INFO, logger="agent.rl")
    for _ in range(5):
        limited.warning(("inv1", "timeout"), "device timeout device=%s", "inv1")
        clock.now += 1
    assert [r.getMessage() for r in caplog.records] == ["device timeout device=inv1"]
    assert limited.warning(("inv2", "timeout"), "device timeout device=%s", "inv2")  # other key: own budget
    clock.now += 60
    assert limited.warning(("inv1", "timeout"), "device timeout device=%s", "inv1")
    assert caplog.records[-1].getMessage() == "device timeout device=inv1 suppressed=4"
    assert caplog.records[-1].funcName == "test_rate_limited_logger"  # points at the caller
    limited.reset(("inv1", "timeout"))
    assert limited.error(("inv1", "timeout"), "again")
    assert limited.log_every("k", 10) == 0
    assert limited.log_every("k", 10) is None
    clock.now += 10
    assert limited.log_every("k", 10) == 1


def test_rate_limiter_forgets_oldest_keys() -> None:
    limited = RateLimitedLogger(logging.getLogger("agent.rl"), 60, clock=FakeClock(), max_keys=2)
    assert limited.log_every("a") == 0
    assert limited.log_every("b") == 0
    assert limited.log_every("c") == 0
    assert limited.log_every("a") == 0  # "a" was forgotten, so it may log again
    assert limited.log_every("c") is None
