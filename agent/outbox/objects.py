"""One object's rows of the outbox, as the drain sees them.

The readings and the gateway's status records share one outbox (one file, one writer, one byte
cap), but a streaming request and a bulk job each carry one object. Each object therefore has its
own drain (its own lanes, schema guard and backoff) over an :class:`ObjectQueue`: leases and
statistics of that object only. Acks, nacks and rejects go by lease, which never mixes objects.
"""

from __future__ import annotations

from collections.abc import Collection

from agent.outbox.store import Outbox
from agent.outbox.types import Lease, LeasedRow, OutboxStats


class ObjectQueue:
    """The drain's view of ``outbox`` restricted to ``obj`` (None: the readings)."""

    def __init__(self, outbox: Outbox, obj: str | None) -> None:
        self.outbox = outbox
        self.obj = obj

    async def lease(self, max_records: int, max_bytes: int, older_than_ms: int | None = None) -> Lease | None:
        return await self.outbox.lease(max_records, max_bytes, older_than_ms, obj=self.obj)

    async def lease_bulk(self, max_records: int, max_bytes: int | None = None,
                         older_than_ms: int | None = None) -> Lease | None:
        return await self.outbox.lease_bulk(max_records, max_bytes, older_than_ms, obj=self.obj)

    async def ack(self, lease: Lease, event_ids: Collection[str] | None = None) -> int:
        return await self.outbox.ack(lease, event_ids)

    async def nack(self, lease: Lease, retry_at_ms: int, event_ids: Collection[str] | None = None) -> int:
        return await self.outbox.nack(lease, retry_at_ms, event_ids)

    async def reject(self, lease: Lease, reasons: dict[str, str]) -> int:
        return await self.outbox.reject(lease, reasons)

    async def stats(self) -> OutboxStats:
        return await self.outbox.object_stats(self.obj)

    async def peek(self, limit: int = 20) -> list[LeasedRow]:
        return await self.outbox.peek(limit, obj=self.obj)
