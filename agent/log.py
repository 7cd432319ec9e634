"""Logging for journald: plain ``key=value`` lines on stdout, rate limiting, and secret redaction.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the sd-daemon ``<N>`` priority prefix,
so ``journalctl -p warning`` works, and carries no timestamp (journald adds its own). By hand, each
line starts with a UTC timestamp and the level name.

Every line passes :func:`redact` last, after the traceback is rendered, so a token inside an
exception message or an HTTP body is masked too. Never rely on it: do not log secrets.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import IO, Any

__all__ = [
    "REDACTED",
    "JournalFormatter",
    "RateLimitedLogger",
    "RedactingFilter",
    "redact",
    "setup_logging",
]

REDACTED = "[REDACTED]"

# sd-daemon(3) priorities, the syslog levels.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL)
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20)[A-Za-z0-9\-._~+/!]+=*")
# A JWT (JWS compact form): the header is base64url JSON, so it starts with "eyJ" ('{"').
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Any other three long base64url segments joined by dots (an encrypted or unusual token).
_DOTTED = re.compile(r"\b[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}")
_SECRET_KEYS = (
    r"access_token|refresh_token|id_token|assertion|client_assertion|client_secret|password|passwd|token"
)
# key=value, key: value, "key": "value", 'key': 'value', key%3Dvalue is left to the bearer/JWT rules.
_KEY_VALUE = re.compile(
    rf"""(?ix)
    (?P<key>["']?\b(?:{_SECRET_KEYS})\b["']?\s*[:=]\s*)
    (?!\[REDACTED\])  # already masked (the filter and the formatter both run): stay idempotent
    (?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&,;}}\]"']+)
    """
)


def _mask_value(match: re.Match[str]) -> str:
    value = match["value"]
    if value[0] in "\"'":
        return f"{match['key']}{value[0]}{REDACTED}{value[0]}"
    return f"{match['key']}{REDACTED}"


def redact(text: str) -> str:
    """Mask bearer tokens, JWTs, secret-looking key/value pairs and PEM blocks in ``text``."""
    # No BEGIN marker in the replacement: a second pass would read it as a truncated block.
    text = _PEM.sub(lambda m: f"[REDACTED {m[1]}]", text)
    text = _BEARER.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _JWT.sub(REDACTED, text)
    return _DOTTED.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact`; attach it to a handler, not a logger.

    (A filter on a logger does not see records propagated from child loggers; one on the handler
    sees every record that handler writes.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JournalFormatter(logging.Formatter):
    """``<6>agent.drain: message key=value`` for journald, timestamped lines for a terminal."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{secs}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        body = f"{record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body = f"{body}\n{record.exc_text}"
        body = redact(body)
        if self.journal:
            # journald splits a stream at newlines; each line needs its own priority prefix.
            prefix = f"<{_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in body.splitlines())
        return f"{self.formatTime(record)} {record.levelname} {body}"


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def setup_logging(
    level: int = logging.INFO,
    *,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Install the one root handler (replacing earlier ones) and return it."""
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JournalFormatter(journal=bool(env.get("JOURNAL_STREAM"))))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class RateLimitedLogger:
    """Logs a repeated condition at most once per period per key, with a count of what it held back.

    A Modbus bus that lost a device times out every poll; one line a minute with
    ``suppressed=58`` tells the technician as much as 59 lines.

    Args:
        logger: where allowed lines go.
        every_seconds: the default period per key.
        clock: monotonic seconds (injected by tests).
        max_keys: the oldest keys are forgotten beyond this, so memory stays bounded.
    """

    def __init__(
        self,
        logger: logging.Logger,
        every_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.logger = logger
        self.every_seconds = every_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._seen: OrderedDict[Hashable, list[float | int]] = OrderedDict()  # key -> [last, suppressed]

    def log_every(self, key: Hashable, seconds: float | None = None) -> int | None:
        """None to stay quiet; otherwise the number of occurrences suppressed since the last line."""
        now = self._clock()
        period = self.every_seconds if seconds is None else seconds
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < period:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return suppressed

    def reset(self, key: Hashable) -> None:
        """The condition cleared (the device answers again): the next failure logs at once."""
        self._seen.pop(key, None)

    def log(self, level: int, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        suppressed = self.log_every(key)
        if suppressed is None:
            return False
        if suppressed:
            msg, args = f"{msg} suppressed=%d", (*args, suppressed)
        kwargs.setdefault("stacklevel", 3)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def error(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args, **kwargs)

    def info(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args, **kwargs)
