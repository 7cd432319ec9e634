"""The one thread that owns the SQLite connection, fed by a queue; the event loop awaits futures.

Contract: operations run one at a time on the writer thread; nothing else ever touches the
connection. Grouped operations (appends) are handed to the group handler together, so they share
one transaction (group commit):

* An urgent item (``call_grouped(..., urgent=True)``), or any item when ``linger_seconds == 0``:
  everything in submission order. The group takes the grouped items waiting with it and commits
  before any later operation runs.
* Otherwise the group also waits for items still to come (it lingers), and commits when its first
  item has waited ``linger_seconds``, when it reaches ``_MAX_GROUP`` items or ``group_bytes`` of
  weight (what the items say they weigh: their payload bytes), when ``commit_soon``
  asks for it, or before a barrier operation (``call(..., barrier=True)``, and the stop). Other
  operations run as they arrive, while the group waits: no caller can tell, because an item's
  caller has not been answered before its commit. This is what spares an SD card: one commit
  (its WAL frames, its fsync) per ``linger_seconds`` instead of one per source and poll.

With ``sync`` (the outbox's synchronous=FULL), a group commits without waiting for the disk and
a second thread makes it durable (``sync()``: an fsync of the WAL) before its callers are answered,
while this thread goes on with the next group: the disk's flush overlaps the next transaction's
work instead of adding to it. Barrier operations and the stop wait for those syncs first.

A result or an exception is delivered to the caller's future with ``loop.call_soon_threadsafe``;
the loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

# How many grouped items one transaction takes: bounds the latency a long group adds to a read,
# and the memory a lingering group holds (a flood of MQTT messages commits early).
_MAX_GROUP: Final = 4096

_T = TypeVar("_T")


class _Op:
    __slots__ = ("barrier", "fn", "fut", "item", "loop", "weight")    # barrier: on a grouped item, "urgent"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        fut: asyncio.Future[Any] | None,
        fn: Callable[[], Any] | None,
        item: Any = None,
        barrier: bool = False,
        weight: int = 0,
    ) -> None:
        self.loop = loop
        self.fut = fut
        self.fn = fn          # None: a grouped item (or, without a future, a commit_soon marker)
        self.item = item
        self.barrier = barrier
        self.weight = weight


# Queued by commit_soon: commit the waiting group now.
_COMMIT_SOON: Final = _Op(None, None, None)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class WriterThread:
    """A dedicated thread running queued operations.

    Args:
        name: thread name (shows in py-spy and in thread dumps).
        group_handler: called on the thread with the items of every waiting grouped operation;
            returns one result or exception per item, in order.
        linger_seconds: how long a group may wait for more items before it commits (see the
            module docstring); 0 commits what is waiting at once.
        group_bytes: a lingering group this heavy commits without waiting longer.
        sync: makes committed groups durable on a thread of its own (see the module docstring);
            an exception it raises is every waiting caller's.
    """

    def __init__(self, name: str, group_handler: Callable[[Sequence[Any]], list[Any]],
                 linger_seconds: float = 0.0, sync: Callable[[], None] | None = None,
                 group_bytes: int | None = None) -> None:
        self._q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._group_handler = group_handler
        self._linger = max(0.0, linger_seconds)
        self._group_bytes = group_bytes
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._syncer = _Syncer(f"{name}.sync", sync) if sync is not None else None

    def start(self) -> None:
        if self._syncer is not None:
            self._syncer.start()
        self._thread.start()

    def call(self, fn: Callable[[], _T], *, barrier: bool = False) -> asyncio.Future[_T]:
        """Run ``fn()`` on the writer thread; the future holds its result or exception.

        ``barrier``: commit the waiting group first (closing the connection must not strand it).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._q.put(_Op(loop, fut, fn, barrier=barrier))
        return fut

    def call_grouped(self, item: Any, *, urgent: bool = False, weight: int = 0) -> asyncio.Future[Any]:
        """Queue ``item`` for the group handler; it shares a call with the items grouped with it.

        ``urgent``: commit the group as soon as it holds the items already waiting (no linger).
        ``weight``: counted against ``group_bytes``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put(_Op(loop, fut, None, item, barrier=urgent, weight=weight))
        return fut

    def commit_soon(self) -> None:
        """Commit the waiting group without waiting for the rest of its linger (thread-safe)."""
        self._q.put(_COMMIT_SOON)

    def stop(self) -> None:
        """Ask the thread to finish after the operations already queued (does not wait)."""
        self._q.put(None)

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        group: list[_Op] = []
        deadline = 0.0
        weight = 0
        urgent = False                           # the group commits once it took what is waiting
        while True:
            op = self._next(group, deadline)
            if op is None:                       # stop: what is waiting still commits
                self._commit(group)
                if self._syncer is not None:
                    self._syncer.stop()
                return
            if op is _COMMIT_SOON:
                self._commit(group)
            elif op.fn is None:
                if not group:
                    deadline = time.monotonic() + self._linger
                    urgent = self._linger == 0
                    weight = 0
                urgent = urgent or op.barrier
                weight += op.weight
                group.append(op)
                if self._group_bytes is not None and weight >= self._group_bytes:
                    urgent = True                # heavy enough: commit what is waiting, no more linger
                if len(group) >= _MAX_GROUP:
                    self._commit(group)
            else:
                if op.barrier or urgent:
                    self._commit(group)          # in submission order
                if op.barrier and self._syncer is not None:
                    self._syncer.wait_idle()     # ... and durable before it
                self._deliver(op, *_invoke(op.fn))
            if group and (self._q.empty() if urgent else time.monotonic() >= deadline):
                self._commit(group)

    def _next(self, group: list[_Op], deadline: float) -> _Op | None:
        """The next operation; a lingering group's commit when its time comes first."""
        if not group:
            return self._q.get()
        wait = deadline - time.monotonic()
        try:
            return self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
        except queue.Empty:
            return _COMMIT_SOON

    def _commit(self, group: list[_Op]) -> None:
        if not group:
            return
        try:
            results = self._group_handler([g.item for g in group])
        except BaseException as exc:
            results = [exc] * len(group)
        if self._syncer is not None:
            self._syncer.put(list(group), results)
        else:
            _deliver_all(group, results)
        group.clear()

    @staticmethod
    def _deliver(op: _Op, result: Any, exc: BaseException | None) -> None:
        assert op.loop is not None and op.fut is not None
        # RuntimeError: the loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            op.loop.call_soon_threadsafe(_settle, op.fut, result, exc)


class _Syncer:
    """The thread that makes committed groups durable, then answers their callers.

    Groups that committed while a sync ran share the next one (group commit of the fsync).
    """

    def __init__(self, name: str, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._cond = threading.Condition()
        self._pending: list[tuple[list[_Op], list[Any]]] = []
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, group: list[_Op], results: list[Any]) -> None:
        with self._cond:
            self._pending.append((group, results))
            self._cond.notify_all()

    def wait_idle(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy)

    def stop(self) -> None:
        self.wait_idle()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._busy = True
            error: BaseException | None = None
            try:
                self._sync()
            except BaseException as exc:
                error = exc
            for group, results in batch:
                _deliver_all(group, results if error is None else [error] * len(group))
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def _deliver_all(group: Sequence[_Op], results: Sequence[Any]) -> None:
    for g, r in zip(group, results, strict=True):
        if isinstance(r, BaseException):
            WriterThread._deliver(g, None, r)
        else:
            WriterThread._deliver(g, r, None)


def _invoke(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except BaseException as exc:
        return None, exc
