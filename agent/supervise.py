"""One-for-one supervision of the agent's long-lived components (Erlang/OTP's idea, in asyncio).

A ``TaskGroup`` cancels every sibling when one child raises: right for the parts of one request,
wrong for a daemon's components. Here each component (a source, a drain lane, the status server,
the clock hold-back) runs in its own guarded loop:

* an unexpected exception restarts *that* component after a jittered, capped exponential delay
  (``base * 2**(n-1)``, at most ``cap``, times a random factor in [0.5, 1]), counts it, logs one
  line (the traceback only at debug level) and keeps the others running;
* a component that ran ``stable_seconds`` without failing starts counting its failures afresh;
* after ``max_restarts`` consecutive failures the supervisor gives up on it: the component stays
  down, health says ``failed`` with its name and last error, and the systemd watchdog stops being
  fed (so systemd restarts the whole process, the escalation OTP calls restart intensity);
* the exceptions in ``fatal`` (the outbox cannot commit) are never contained: they end the process;
* cancellation is not a failure: a component cancelled by a stop is ``stopped``.

A component that returns normally has finished its work (the drain after a stop): it is not restarted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ComponentState", "Supervisor"]

log = logging.getLogger(__name__)

State = Literal["running", "restarting", "failed", "stopped"]

DEFAULT_BASE_SECONDS: Final = 1.0
DEFAULT_CAP_SECONDS: Final = 60.0
DEFAULT_MAX_RESTARTS: Final = 10          # 1+2+4+...+60 s: about five minutes of trying
DEFAULT_STABLE_SECONDS: Final = 60.0
# Health stays degraded this long after a restart, so a component that crashes once an hour shows.
RECENT_RESTART_SECONDS: Final = 300.0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class ComponentState:
    """What status and health show about one supervised component."""

    name: str
    state: State = "running"
    restarts: int = 0                 # restarts since the agent started
    consecutive: int = 0              # failures without a stable run in between
    last_error: str = ""
    last_error_ms: int | None = None  # wall time of the last failure
    retry_at_ms: int | None = None    # wall time of the next start while restarting

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_error_ms": self.last_error_ms, "retry_at_ms": self.retry_at_ms}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Supervisor:
    """Runs named components and restarts the ones that fail (see the module docstring).

    Args:
        fatal: exception types that end the process instead of restarting a component.
        on_restart: called with the component's name on every restart (a metrics counter).
        base_seconds, cap_seconds: the restart delay grows from base to cap.
        max_restarts: consecutive failures before the supervisor gives up on a component.
        stable_seconds: a run at least this long resets the consecutive failure count.
        rng: randomness of the jitter (tests pass a seeded one).
        now_ms: wall clock for the times status shows.

    Concurrency: one event loop; ``components``/``gave_up``/``problems`` never await.
    """

    def __init__(
        self,
        *,
        fatal: tuple[type[BaseException], ...] = (),
        on_restart: Callable[[str], None] | None = None,
        base_seconds: float = DEFAULT_BASE_SECONDS,
        cap_seconds: float = DEFAULT_CAP_SECONDS,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        stable_seconds: float = DEFAULT_STABLE_SECONDS,
        rng: random.Random | None = None,
        now_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self._fatal = fatal
        self._on_restart = on_restart or (lambda name: None)
        self._base = base_seconds
        self._cap = cap_seconds
        self._max_restarts = max_restarts
        self._stable = stable_seconds
        self._rng = rng or random.Random()
        self._now_ms = now_ms
        self._states: dict[str, ComponentState] = {}

    def start(self, tg: asyncio.TaskGroup, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``factory()`` as component ``name`` in ``tg``, restarting it on failure.

        ``factory`` is called again for every restart, so it must build a fresh coroutine.
        """
        if name in self._states and self._states[name].state in ("running", "restarting"):
            raise ValueError(f"component {name!r} is already supervised")
        self._states[name] = ComponentState(name)
        return tg.create_task(self._guard(name, factory), name=f"agent[{name}]")

    # -- what health, status and the watchdog read ---------------------------------------------------
    def components(self) -> Sequence[ComponentState]:
        return list(self._states.values())

    def gave_up(self) -> list[ComponentState]:
        return [c for c in self._states.values() if c.state == "failed"]

    def degraded(self, now_ms: int | None = None) -> list[ComponentState]:
        """Components restarting now or restarted within the last few minutes (not given up)."""
        now = self._now_ms() if now_ms is None else now_ms
        return [c for c in self._states.values()
                if c.state == "restarting" or (c.state == "running" and c.last_error_ms is not None
                                               and now - c.last_error_ms < RECENT_RESTART_SECONDS * 1000)]

    # -- the guard -------------------------------------------------------------------------------------
    def _fatal_in(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, self._fatal):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                found = self._fatal_in(inner)
                if found is not None:
                    return found
        return None

    def delay_for(self, consecutive: int) -> float:
        """The jittered restart delay after ``consecutive`` failures (>= 1)."""
        ceiling = min(self._cap, self._base * 2.0 ** max(0, consecutive - 1))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        st = self._states[name]
        loop = asyncio.get_running_loop()
        while True:
            st.state = "running"
            st.retry_at_ms = None
            started = loop.time()
            try:
                await factory()
            except asyncio.CancelledError:
                st.state = "stopped"
                raise
            except Exception as exc:
                fatal = self._fatal_in(exc)
                if fatal is not None:
                    st.state = "failed"
                    st.last_error = _describe(fatal)
                    raise fatal from None
                if loop.time() - started >= self._stable:
                    st.consecutive = 0
                st.consecutive += 1
                st.last_error = _describe(exc)
                st.last_error_ms = self._now_ms()
                if st.consecutive > self._max_restarts:
                    st.state = "failed"
                    log.critical("supervisor: gave up on component=%s after %d consecutive failures; "
                                 "last error: %s hint=%s", name, st.consecutive, st.last_error,
                                 "the systemd watchdog stops being fed, so systemd restarts the agent; "
                                 "send `solar-agent support-bundle` or the journal to the maintainers")
                    log.debug("supervisor: component=%s traceback", name, exc_info=exc)
                    return
                delay = self.delay_for(st.consecutive)
                st.restarts += 1
                st.state = "restarting"
                st.retry_at_ms = st.last_error_ms + int(delay * 1000)
                self._on_restart(name)
                log.error("supervisor: component=%s failed (%s); restart %d in %.1fs, the others keep running "
                          "hint=%s", name, st.last_error, st.restarts, delay,
                          "run with -v for the traceback; if it repeats, report it with the journal")
                log.debug("supervisor: component=%s traceback", name, exc_info=exc)
                await asyncio.sleep(delay)
                continue
            st.state = "stopped"
            return
