"""systemd notify protocol (sd_notify) without a dependency, and a watchdog fed by the working loops.

``Notifier`` sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` datagrams to the
socket named in ``NOTIFY_SOCKET`` (a path, or an abstract name starting with ``@``). Without that
variable (run by hand, in tests) every call is a no-op, so callers never check.

The watchdog is deliberately not a free-running timer: a timer task would keep pinging systemd while
the drain loop hangs. Instead each working loop registers with a :class:`Watchdog` and calls
``beat(name)`` once per iteration; ``WATCHDOG=1`` goes out only while every registered loop has
beaten within its own allowed period and no added check reports a problem (the supervisor reports
the components it gave up on). A stuck event loop, a stuck drain or a component given up therefore
stop the pings, and systemd restarts the agent after ``WatchdogSec``. Sources never beat: a dead
inverter must show in health, not restart the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Notifier", "Watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


def _address(raw: str) -> str | bytes:
    # An "@" prefix names a Linux abstract socket; the kernel wants a leading NUL byte instead.
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends sd_notify messages; a no-op when the service manager gave no socket.

    Sending never blocks the event loop: the socket is non-blocking and a datagram the manager
    cannot take right now is dropped (the next status or watchdog message supersedes it).
    """

    def __init__(self, address: str | None) -> None:
        self._address = _address(address) if address else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, message: str) -> bool:
        """Send one raw notify message (``KEY=value`` lines); True when it was handed to the socket."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # The manager went away or its queue is full: not a reason to stop reading inverters.
            log.debug("sd_notify failed message=%r error=%s", message.split("=", 1)[0], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """The config is being reloaded; ``ready()`` ends it (systemd keeps the unit active meanwhile)."""
        return self.send("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the notify message.
    return " ".join(text.splitlines())


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects us to honour, in seconds; None when there is none.

    ``WATCHDOG_PID`` (when set) must name this process: a child that inherited the environment
    must not ping on behalf of its parent.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


@dataclass(slots=True)
class _Loop:
    period: float
    last: float


class Watchdog:
    """Pings systemd only while every registered working loop is alive.

    Args:
        notifier: where ``WATCHDOG=1`` goes.
        default_period_seconds: the allowed gap between beats when ``register`` gives none.
        clock: a monotonic clock in seconds (injected by tests).

    Concurrency: meant for one event loop; ``beat`` is a dict store and never awaits.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        default_period_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._default_period = default_period_seconds
        self._clock = clock
        self._loops: dict[str, _Loop] = {}
        self._checks: dict[str, Callable[[], list[str]]] = {}
        self._reported: frozenset[str] = frozenset()

    def register(self, name: str, period_seconds: float | None = None) -> None:
        """Expect ``beat(name)`` at least every ``period_seconds``; the clock starts now."""
        if period_seconds is None:
            period_seconds = self._default_period
        if period_seconds <= 0:
            raise ValueError(f"watchdog period for {name!r} must be positive")
        self._loops[name] = _Loop(period_seconds, self._clock())

    def add_check(self, name: str, problems: Callable[[], list[str]]) -> None:
        """Withhold the ping while ``problems()`` names anything (e.g. components a supervisor gave up on)."""
        self._checks[name] = problems

    def unregister(self, name: str) -> None:
        """A loop that ends on purpose (a bus removed, shutdown) stops being expected."""
        self._loops.pop(name, None)

    def beat(self, name: str) -> None:
        """Called by a working loop once per iteration. Unknown names are a programming error."""
        self._loops[name].last = self._clock()

    def stale(self) -> list[str]:
        """Names of the loops that missed their period and of failed checks' findings, sorted."""
        now = self._clock()
        out = [name for name, loop in self._loops.items() if now - loop.last > loop.period]
        for check, problems in self._checks.items():
            out += [f"{check}:{p}" for p in problems()]
        return sorted(out)

    def check(self) -> bool:
        """Send ``WATCHDOG=1`` when every loop is fresh; return whether all were fresh."""
        stale = self.stale()
        if frozenset(stale) != self._reported:
            self._reported = frozenset(stale)
            if stale:
                log.warning("watchdog withheld stale_loops=%s hint=%s", ",".join(stale),
                            "a loop is stuck; systemd restarts the agent if it does not recover")
            else:
                log.info("watchdog all loops alive again")
        if stale:
            return False
        self._notifier.watchdog()
        return True

    async def run(self, interval_seconds: float) -> None:
        """Check every ``interval_seconds`` (use half of ``watchdog_interval()``) until cancelled."""
        while True:
            self.check()
            await asyncio.sleep(interval_seconds)
