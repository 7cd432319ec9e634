"""The one thread that owns the SQLite connection, fed by a queue; the event loop awaits futures.

Contract: operations run one at a time, in submission order, on the writer thread; nothing else
ever touches the connection. Grouped operations (appends) that are waiting together are handed to
the group handler in one call, so they share one transaction (group commit). A result or an
exception is delivered to the caller's future with ``loop.call_soon_threadsafe``; the loop never
blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# How many waiting operations one wake-up takes: bounds the latency a long group adds to a read.
_MAX_DRAIN = 4096

_T = TypeVar("_T")


class _Op:
    __slots__ = ("fn", "fut", "item", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[Any],
        fn: Callable[[], Any] | None,
        item: Any = None,
    ) -> None:
        self.loop = loop
        self.fut = fut
        self.fn = fn          # None: a grouped item
        self.item = item


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
    """

    def __init__(self, name: str, group_handler: Callable[[Sequence[Any]], list[Any]]) -> None:
        self._q: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._group = group_handler
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run ``fn()`` on the writer thread; the future holds its result or exception."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()
        self._q.put(_Op(loop, fut, fn))
        return fut

    def call_grouped(self, item: Any) -> asyncio.Future[Any]:
        """Queue ``item`` for the group handler; it shares a call with every item waiting with it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put(_Op(loop, fut, None, item))
        return fut

    def stop(self) -> None:
        """Ask the thread to finish after the operations already queued (does not wait)."""
        self._q.put(None)

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._q.get()
            ops: list[_Op] = []
            if first is None:
                stopping = True
            else:
                ops.append(first)
                # Take everything already waiting: appends among them commit together.
                while len(ops) < _MAX_DRAIN:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    ops.append(nxt)
            self._execute(ops)

    def _execute(self, ops: list[_Op]) -> None:
        grouped = [op for op in ops if op.fn is None]
        group_done = False
        for op in ops:
            if op.fn is not None:
                self._deliver(op, *_invoke(op.fn))
            elif not group_done:
                # The group runs where its first member was queued; later members join it early,
                # which no caller can observe (they were all waiting at the same time).
                group_done = True
                try:
                    results = self._group([g.item for g in grouped])
                except BaseException as exc:
                    results = [exc] * len(grouped)
                for g, r in zip(grouped, results, strict=True):
                    if isinstance(r, BaseException):
                        self._deliver(g, None, r)
                    else:
                        self._deliver(g, r, None)

    @staticmethod
    def _deliver(op: _Op, result: Any, exc: BaseException | None) -> None:
        # RuntimeError: the loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            op.loop.call_soon_threadsafe(_settle, op.fut, result, exc)


def _invoke(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except BaseException as exc:
        return None, exc
