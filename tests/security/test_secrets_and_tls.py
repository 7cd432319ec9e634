"""Security promises, checked on real runs: certificates are always verified, and no token,
assertion or key ever reaches a log line."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from agent.clock import ClockGuard
from agent.config import DataCloudConfig, load_config
from agent.datacloud import TokenProvider
from agent.emulator import Faults
from agent.errors import DataCloudError
from agent.log import setup_logging
from agent.records import Reading, RecordBuilder, load_schema
from agent.runtime import Agent
from tests.cli.conftest import write_config
from tests.peers.emulator import CLIENT_ID, USERNAME, make_keypair, running_emulator

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


async def test_a_self_signed_data_cloud_is_refused_without_its_ca(tmp_path: Path) -> None:
    key, pem = make_keypair(tmp_path)
    async with running_emulator(tmp_path, public_key_pem=pem, tls_dir=tmp_path / "tls") as emu, \
            aiohttp.ClientSession() as session:
        assert emu.url.startswith("https://") and emu.ca_file is not None
        cfg = DataCloudConfig(login_url=emu.url, client_id=CLIENT_ID, username=USERNAME, private_key_path=key,
                              source_name="solar_agent", timeout_seconds=5.0)
        with pytest.raises(DataCloudError, match=r"(?i)certificate") as refused:
            await TokenProvider(cfg, session).token()
        # Issue #12: the message names the host, not "<ssl.SSLContext object at 0x...>", and the hint ca_file.
        assert "object at 0x" not in str(refused.value) and "127.0.0.1" in str(refused.value)
        assert "datacloud.ca_file" in (refused.value.hint or "")
        token = await TokenProvider(replace(cfg, ca_file=emu.ca_file), session).token()
        assert token.instance_url.startswith("https://")


class _Collect(logging.Handler):
    """Every raw record, before any redaction: we want secrets never logged, not merely masked."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_no_secret_in_any_log_line_of_a_full_run(tmp_path: Path) -> None:
    key, pem = make_keypair(tmp_path)
    journal = io.StringIO()
    handler = setup_logging(logging.DEBUG, stream=journal, environ={"JOURNAL_STREAM": "1"})
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    try:
        async with running_emulator(tmp_path, public_key_pem=pem) as emu:
            site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=0.2)
            agent = Agent(load_config(site.config), source_factory=lambda cfg: [],
                          clock=ClockGuard(assume_synced=True))
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.ready.wait(), 10)
            assert agent.outbox is not None
            builder = RecordBuilder(load_schema(), "cli-site", "001CLI0000000001")
            t0 = int(time.time() * 1000)
            await agent.outbox.append([builder.encode(Reading("inv", t0 + i, "test", {"ac_power_w": 1.0}))
                                       for i in range(5)])
            await emu.wait_landed(5, timeout=15)
            emu.set_faults(Faults(expire_tokens=True))       # a 401 and a second login in the same run
            await agent.outbox.append([builder.encode(Reading("inv", t0 + 100 + i, "test", {"ac_power_w": 2.0}))
                                       for i in range(5)])
            await emu.wait_landed(10, timeout=15)
            tokens = [*emu._auth.core, *emu._auth.dc]          # every token the org issued in this run
            agent.request_stop()
            assert await asyncio.wait_for(task, 15) == 0
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().removeHandler(collect)
    assert len(tokens) >= 4
    key_lines = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    raw = "\n".join(r.getMessage() + (r.exc_text or "") for r in collect.records)
    for text in (raw, journal.getvalue()):
        assert text, "the run logged nothing: the scan would prove nothing"
        for token in tokens:
            assert token not in text
        assert not JWT.search(text), JWT.search(text)
        assert "PRIVATE KEY" not in text and not any(line in text for line in key_lines)
