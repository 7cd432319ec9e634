"""SIGKILL of the agent process in the middle of a bulk backfill, then a restart: the journal in the
outbox resumes the job (UploadComplete/InProgress) or aborts and re-uploads it (Open/uploading), and
every reading committed before and after lands exactly once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.emulator import Faults
from tests.peers.site import AgentProcess, OutboxWatcher, Site, outbox_jobs, outbox_meta, wait_for

pytestmark = pytest.mark.slow

BULK_AFTER = 2.0
# The bulk lane only takes rows older than the drain's fresh window (at least 5 s), so the outage
# must outlast that too, not only bulk_after.
OUTAGE_SECONDS = 7.0


async def _backlog_past_bulk_threshold(site: Site, watcher: OutboxWatcher) -> None:
    """An outage until the oldest undelivered reading is older than bulk_after."""
    site.emu.set_faults(Faults(outage=True))
    start = time.monotonic()

    async def old_enough() -> bool:
        await watcher.snapshot()
        meta = await asyncio.to_thread(outbox_meta, site.outbox_path)
        return meta["rows"] > 30 and time.monotonic() - start > OUTAGE_SECONDS
    await wait_for(old_enough, 20, "a backlog older than bulk_after")


async def _journal_state(site: Site, states: set[str], timeout: float) -> tuple[int, str | None, str]:
    found: list[tuple[int, str | None, str]] = []

    async def in_state() -> bool:
        jobs = await asyncio.to_thread(outbox_jobs, site.outbox_path)
        found[:] = [j for j in jobs if j[2] in states]
        return bool(found)
    await wait_for(in_state, timeout, f"a bulk job journaled in {sorted(states)}", every=0.02)
    return found[0]


async def _start(site: Site) -> tuple[AgentProcess, OutboxWatcher]:
    # Tiny batches: the bulk lane's age trigger wants a backlog worth 20 streaming requests.
    site.write_config(flush_interval_seconds=0.5, bulk_after_seconds=BULK_AFTER, retry_max_seconds=1.0,
                      extra_drain="batch_max_bytes = 800")
    agent = await site.start_agent()
    watcher = site.watch()
    await wait_for(lambda: site.emu.store.count() > 0, 20, "the first streamed readings")
    return agent, watcher


async def _finish(site: Site, watcher: OutboxWatcher) -> None:
    site.silence()
    await site.wait_delivered(watcher, within=40)
    rec = site.reconcile(watcher)
    assert rec.ok, str(rec)
    assert rec.produced > 50


async def test_kill_while_the_bulk_job_is_processing_resumes_it(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), tcp=True, emulator={"bulk_processing_seconds": 4.0}) as site:
        agent, watcher = await _start(site)
        await _backlog_past_bulk_threshold(site, watcher)
        site.emu.set_faults(Faults())
        _, job_id, _ = await _journal_state(site, {"UploadComplete", "InProgress"}, 20)
        assert job_id is not None
        agent.kill()
        assert site.emu.job_state(job_id) in ("UploadComplete", "InProgress")
        await site.start_agent()
        await _finish(site, watcher)
        # Resumed, not redone: the killed job itself completed (a later job may take the newer backlog).
        assert site.emu.job_state(job_id) == "JobComplete"
        assert "resuming job " + job_id in site.agents[1].log_text()
        assert await asyncio.to_thread(outbox_jobs, site.outbox_path) == []


async def test_kill_while_uploading_aborts_and_uploads_again(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), tcp=True, emulator={"bulk_processing_seconds": 0.5}) as site:
        agent, watcher = await _start(site)
        await _backlog_past_bulk_threshold(site, watcher)
        # Slow answers keep the job Open (create, then the upload) long enough to kill it there.
        site.emu.set_faults(Faults(latency_seconds=1.5))
        _, job_id, _ = await _journal_state(site, {"Open", "uploading"}, 30)
        assert job_id is not None
        agent.kill()
        site.emu.set_faults(Faults())
        assert site.emu.job_state(job_id) == "Open"
        await site.start_agent()
        await _finish(site, watcher)
        # Its rows went again (by a new job or by streaming, whichever lane was due).
        assert site.emu.job_state(job_id) == "Aborted"


async def test_restart_during_an_outage_with_a_journaled_job_keeps_running(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), emulator={"bulk_processing_seconds": 4.0}) as site:
        agent, watcher = await _start(site)
        await _backlog_past_bulk_threshold(site, watcher)
        site.emu.set_faults(Faults())
        await _journal_state(site, {"UploadComplete", "InProgress"}, 20)
        agent.kill()
        site.emu.set_faults(Faults(outage=True))     # the link drops with the gateway (a power cut)
        second = await site.start_agent()
        # Through a few retry periods of the outage the agent must stay up and keep reading.
        before = len(await watcher.snapshot())

        async def more_readings_or_exit() -> bool:
            return len(await watcher.snapshot()) > before + 20 or not second.alive()
        await wait_for(more_readings_or_exit, 15, "more readings")
        assert second.alive(), second.log_text()[-3000:]
        site.emu.set_faults(Faults())
        await _finish(site, watcher)
