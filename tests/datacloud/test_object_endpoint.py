"""datacloud.object_endpoint drives the object's name on the wire in both lanes, over real HTTP.

The connector's downloaded object endpoints are what a client must call ([SI] Streaming Ingestion:
"download the object endpoints. Use these endpoints to send the payload"), and their names need not
be the schema file's object name: [INS] Insert Records posts to
/api/v1/ingest/sources/ntotest/exercises_734a9fa2. The emulator's connector here serves the shipped
schema's solar_panel_event under the endpoint solar_panel_event_7f3a only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.config import DataCloudConfig
from agent.datacloud import BulkClient, BulkUploader, StreamingClient, TokenProvider
from agent.emulator import Emulator, EmulatorSettings
from agent.errors import DataCloudError
from agent.outbox.types import BulkJobRecord
from agent.records import CsvEncoder
from tests.datacloud.conftest import SCHEMA, make_config, make_rows

ENDPOINT = "solar_panel_event_7f3a"


class _Journal:
    async def save(self, job: BulkJobRecord) -> None:
        pass


@pytest.fixture
async def renamed(key_files: tuple[Path, bytes]) -> AsyncIterator[Emulator]:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1],
                                object_endpoints=((ENDPOINT, "solar_panel_event"),))
    async with Emulator(settings) as emu:
        yield emu


def test_endpoint_defaults_to_the_object_name(key_files: tuple[Path, bytes]) -> None:
    cfg = make_config("http://127.0.0.1:9", key_files[0])
    assert isinstance(cfg, DataCloudConfig) and cfg.endpoint_name == "solar_panel_event"
    assert make_config("http://127.0.0.1:9", key_files[0], object_endpoint=ENDPOINT).endpoint_name == ENDPOINT


async def _chunks(payloads: list[bytes]) -> AsyncIterator[list[bytes]]:
    yield payloads


async def test_both_lanes_use_the_endpoint(renamed: Emulator, key_files: tuple[Path, bytes],
                                           session: aiohttp.ClientSession, tmp_path: Path) -> None:
    cfg = make_config(renamed.url, key_files[0], object_endpoint=ENDPOINT)
    tokens = TokenProvider(cfg, session)
    streaming = StreamingClient(tokens, session, cfg.source_name, cfg.endpoint_name)
    stream_rows = make_rows(5)
    await streaming.send([p for _, p in stream_rows])
    assert await streaming.validate([p for _, p in stream_rows]) == []
    bulk_rows = make_rows(40)
    bulk = BulkClient(tokens, session, cfg.source_name, cfg.endpoint_name)
    result = await BulkUploader(bulk, CsvEncoder(SCHEMA), _Journal(), tmp_dir=tmp_path, poll_initial_seconds=0.01,
                                poll_max_seconds=0.05).run(1, _chunks([p for _, p in bulk_rows]))
    assert result.state == "JobComplete"
    await renamed.wait_landed(45, timeout=5)
    assert renamed.store.keys() == {k for k, _ in stream_rows + bulk_rows}
    assert renamed.stats.count("stream_insert", 202) == 1 and renamed.stats.count("job_create", 201) == 1


async def test_the_schema_name_is_not_an_endpoint_there(renamed: Emulator, key_files: tuple[Path, bytes],
                                                       session: aiohttp.ClientSession) -> None:
    cfg = make_config(renamed.url, key_files[0])  # object_endpoint unset: the URL says solar_panel_event
    tokens = TokenProvider(cfg, session)
    with pytest.raises(DataCloudError) as info:
        await StreamingClient(tokens, session, cfg.source_name, cfg.endpoint_name).send([make_rows(1)[0][1]])
    assert info.value.status == 404 and "object_endpoint" in (info.value.hint or "")
    with pytest.raises(DataCloudError) as info:
        await BulkClient(tokens, session, cfg.source_name, cfg.endpoint_name).create_job()
    assert info.value.status == 404 and "object_endpoint" in (info.value.hint or "")
    assert renamed.store.count() == 0
