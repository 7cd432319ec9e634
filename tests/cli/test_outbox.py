"""`solar-agent outbox ...` on a real outbox file with rows and dead letters."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import aiohttp
import pytest

from agent.config import load_config
from agent.datacloud import BulkClient, TokenProvider
from agent.outbox import Outbox, read_stats
from agent.records import load_schema
from tests.cli.conftest import Site, cli, running_agent, write_config
from tests.cli.test_status_drain import records
from tests.peers.emulator import make_keypair, running_emulator


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


async def filled_site(tmp_path: Path, *, rows: int = 30, dead: int = 3, **cfg: object) -> tuple[Site, list[str]]:
    """An outbox with ``rows`` queued rows, ``dead`` of them then rejected into dead letters."""
    if "key" not in cfg:
        make_keypair(tmp_path)
    site = write_config(tmp_path, **cfg)  # type: ignore[arg-type]
    async with Outbox(load_config(site.config).outbox) as ob:
        if rows:
            await ob.append(records(rows))
        ids: list[str] = []
        if dead:
            lease = await ob.lease(dead, 10_000_000)
            assert lease is not None
            ids = [r.event_id for r in lease.rows]
            await ob.reject(lease, {i: f"field ac_power_w: bad value {n}" for n, i in enumerate(ids)})
    return site, ids


async def test_stats_peek_dead_letters_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, dead_ids = await filled_site(tmp_path)
    before = listing(tmp_path)
    assert await cli("outbox", "--config", site.config, "stats") == 0
    out = capsys.readouterr().out
    assert "rows          27" in out and "dead letters  3" in out
    assert await cli("outbox", "--config", site.config, "peek", "-n", "2") == 0
    out = capsys.readouterr().out
    assert out.count("\n#") + out.startswith("#") == 2 and '"ac_power_w":' in out
    assert await cli("outbox", "--config", site.config, "dead-letters", "-n", "2") == 0
    out = capsys.readouterr().out
    first = sorted(dead_ids)[0]   # same rejection time: ordered by event id
    assert first in out and f"reason: field ac_power_w: bad value {dead_ids.index(first)}" in out
    assert "2 of 3" in out
    assert "Try: " in out
    assert listing(tmp_path) == before   # no -wal/-shm created, nothing changed


async def test_read_only_commands_while_the_agent_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, _ = await filled_site(tmp_path)
    async with running_agent(site):
        assert await cli("outbox", "--config", site.config, "stats") == 0
        assert "rows          27" in capsys.readouterr().out
        assert await cli("outbox", "--config", site.config, "dead-letters") == 0
        assert "3 of 3" in capsys.readouterr().out


async def test_missing_outbox_fails_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path)
    assert await cli("outbox", "--config", site.config, "peek") == 1
    err = capsys.readouterr().err
    assert "Error: no outbox at" in err and "Try:" in err


async def test_requeue_when_the_agent_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, dead_ids = await filled_site(tmp_path)
    assert await cli("outbox", "--config", site.config, "requeue", dead_ids[0]) == 0
    assert "requeued 1 dead letter(s) of 1" in capsys.readouterr().out
    st = read_stats(site.outbox)
    assert (st.rows, st.dead_letters) == (28, 2)
    assert await cli("outbox", "--config", site.config, "requeue", "--all") == 0
    st = read_stats(site.outbox)
    assert (st.rows, st.dead_letters) == (30, 0)


async def test_requeue_through_the_running_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, dead_ids = await filled_site(tmp_path)
    async with running_agent(site) as agent:
        assert agent.outbox is not None
        # the agent holds the outbox lock: only the control route can change the queue now
        # The two known ones are requeued; the unknown id makes it exit 1 (issue #12).
        assert await cli("outbox", "--config", site.config, "requeue", *dead_ids[:2], "not-an-id") == 1
        out = capsys.readouterr()
        assert "requeued 2 dead letter(s) of 3 asked, by the running agent" in out.out
        assert "1 of the ids are not dead letters" in out.err
        assert (await agent.outbox.stats()).dead_letters == 1


async def test_requeue_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, _ = await filled_site(tmp_path)
    assert await cli("outbox", "--config", site.config, "requeue") == 2
    assert await cli("outbox", "--config", site.config, "requeue", "--all", "x") == 2
    assert "Try: solar-agent outbox dead-letters" in capsys.readouterr().err


async def test_export_writes_bulk_csv_the_emulator_accepts(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site, _ = await filled_site(tmp_path, rows=40, dead=0, login_url=emu.url, key=key)
        out_dir = tmp_path / "export"
        assert await cli("outbox", "--config", site.config, "export", "--out", out_dir,
                         "--max-file-bytes", "4000") == 0
        out = capsys.readouterr().out
        assert "exported 40 rows" in out and "stay in the outbox" in out
        files = sorted(out_dir.glob("*.csv"))
        assert len(files) > 1 and all(f.stat().st_size <= 4000 for f in files)
        schema = load_schema()
        ids: list[str] = []
        for f in files:
            table = list(csv.reader(io.StringIO(f.read_text())))
            assert tuple(table[0]) == schema.names
            ids += [row[schema.names.index("event_id")] for row in table[1:]]
        assert len(ids) == len(set(ids)) == 40
        manifest = (out_dir / "MANIFEST.txt").read_text()
        assert "rows       40" in manifest and "STILL IN THE OUTBOX" in manifest and "UploadComplete" in manifest
        assert read_stats(site.outbox).rows == 40          # read-only: nothing left the outbox
        cfg = load_config(site.config)
        async with aiohttp.ClientSession() as session:
            bulk = BulkClient(TokenProvider(cfg.datacloud, session), session, "solar_agent", "solar_panel_event")
            job = (await bulk.create_job())["id"]
            for f in files:
                await bulk.upload(job, f.read_bytes())
            await bulk.close(job)
            deadline = time.monotonic() + 10
            while (state := (await bulk.get(job))["state"]) not in ("JobComplete", "Failed"):
                assert time.monotonic() < deadline, state
                await asyncio.sleep(0.05)   # polling the job state, with a deadline
        assert state == "JobComplete"
        assert set(emu.store.keys()) == set(ids)


async def test_export_of_an_empty_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, _ = await filled_site(tmp_path, rows=0, dead=0)
    assert await cli("outbox", "--config", site.config, "export", "--out", tmp_path / "e") == 0
    assert "exported 0 rows into 0 CSV file(s)" in capsys.readouterr().out
    assert "the outbox was empty" in (tmp_path / "e" / "MANIFEST.txt").read_text()
