"""Bulk files are validated and staged while they stream in: a refused or broken upload stages nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from agent.emulator import Emulator
from tests.emulator.conftest import JOBS, dc_headers
from tests.emulator.test_bulk import HEADER, create, patch, upload, wait_state
from tests.peers.emulator import running_emulator


def rows(prefix: str, n: int) -> str:
    return "".join(f"{prefix}{i},2024-05-01T00:00:00.000Z,site-1,{i}.5\r\n" for i in range(n))


async def finish(http: aiohttp.ClientSession, emu: Emulator, auth: dict[str, str], job_id: str) -> None:
    assert (await patch(http, emu, auth, job_id, "UploadComplete")).status == 200
    assert await wait_state(http, emu, auth, job_id, {"JobComplete", "Failed"}) == "JobComplete"


async def test_bad_row_after_several_staged_blocks_stages_nothing(emu: Emulator, http: aiohttp.ClientSession,
                                                                  tmp_path: Path) -> None:
    auth = await dc_headers(http, emu, tmp_path / "jwt.key")
    job = await create(http, emu, auth)
    bad = HEADER + rows("a", 60_000) + "late,2024-05-01T00:00:00.000Z,site-1,not-a-number\r\n"
    assert len(bad) > 2 << 20  # two blocks were converted and staged before the bad row
    resp = await upload(http, emu, auth, job["id"], bad)
    assert resp.status == 400
    assert "row 60001" in (await resp.json())["message"]
    assert (await upload(http, emu, auth, job["id"], HEADER + rows("b", 3))).status == 202
    await finish(http, emu, auth, job["id"])
    assert emu.store.keys() == {"b0", "b1", "b2"}


async def test_oversized_chunked_upload_is_413_and_stages_nothing(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, max_file_bytes=2_500_000) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        job = await create(http, emu, auth)

        async def body() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found mid-stream
            yield HEADER.encode()
            for k in range(6):
                yield rows(f"c{k}-", 10_000).encode()

        resp = await http.put(f"{emu.url}{JOBS}/{job['id']}/batches", data=body(),
                              headers={**auth, "Content-Type": "text/csv"})
        assert resp.status == 413
        assert (await upload(http, emu, auth, job["id"], HEADER + rows("d", 2))).status == 202
        await finish(http, emu, auth, job["id"])
        assert emu.store.keys() == {"d0", "d1"}


async def test_client_gone_mid_upload_stages_nothing(emu: Emulator, http: aiohttp.ClientSession,
                                                     tmp_path: Path) -> None:
    auth = await dc_headers(http, emu, tmp_path / "jwt.key")
    job = await create(http, emu, auth)
    part = (HEADER + rows("e", 40_000)).encode()
    host, port = emu.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"PUT {JOBS}/{job['id']}/batches HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth['Authorization']}\r\n"
            f"Content-Type: text/csv\r\nContent-Length: {len(part) * 2}\r\n\r\n")
    writer.write(head.encode() + part)
    await writer.drain()
    deadline = time.monotonic() + 10
    while emu.staged_rows(job["id"]) == 0:  # the first blocks are staged (uncommitted) ...
        assert time.monotonic() < deadline, "nothing was staged while the body streamed in"
        await asyncio.sleep(0.01)  # polling a condition with a deadline
    writer.close()  # ... then the client is gone, half the promised body sent
    await writer.wait_closed()
    del reader
    # The server notices the drop on its own time: until then the job is still "uploading" (409).
    while (resp := await upload(http, emu, auth, job["id"], HEADER + rows("f", 2))).status == 409:
        assert time.monotonic() < deadline, "the dropped upload never ended"
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    assert resp.status == 202
    await finish(http, emu, auth, job["id"])
    assert emu.store.keys() == {"f0", "f1"}
    assert emu.store.write_counts() == {"f0": 1, "f1": 1}
