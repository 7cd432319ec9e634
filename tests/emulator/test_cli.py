"""`solar-agent emulator` as a technician runs it: a real process, real HTTP, SIGTERM to stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from tests.peers.emulator import make_keypair

ROOT = Path(__file__).resolve().parents[2]


async def test_standalone_emulator_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    _, pub = make_keypair(tmp_path)
    (tmp_path / "jwt.pub").write_bytes(pub)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "emulator", "--port", "0", "--public-key", str(tmp_path / "jwt.pub"),
        "--fault-status", "503=1.0", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(20):
            while not any(line.startswith("agent_version") or "object_name" in line for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "emulator exited: " + "".join(lines)
                lines.append(line)
        text = "".join(lines)
        url = next(line.split()[-1] for line in lines if "listening on" in line)
        assert "[datacloud]" in text and f'login_url = "{url}"' in text
        async with aiohttp.ClientSession() as http:
            resp = await http.post(url + "/api/v1/ingest/sources/solar_agent/solar_panel_event", json={"data": []})
            assert resp.status == 503  # the --fault-status switch is live
            stats = await (await http.get(url + "/__emulator/stats")).json()
            assert stats["injected"] == 1
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = (await proc.stdout.read()).decode()
            assert await proc.wait() == 0
        assert "POST /api/v1/ingest/sources/solar_agent/solar_panel_event status=503" in rest + text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_missing_key_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "emulator", "--public-key", str(tmp_path / "missing.pub"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"Error:" in err and b"Try:" in err


async def test_documents_switches_and_the_snippet(tmp_path: Path) -> None:
    """--audience, --object-endpoint and --fire-and-forget reach the server and the pasted snippet."""
    _, pub = make_keypair(tmp_path)
    (tmp_path / "jwt.pub").write_bytes(pub)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "emulator", "--port", "0", "--public-key", str(tmp_path / "jwt.pub"),
        "--audience", "https://test.salesforce.com", "--fire-and-forget",
        "--object-endpoint", "solar_panel_event_7f3a=solar_panel_event",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(20):
            while not any("object_name" in line for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "emulator exited: " + "".join(lines)
                lines.append(line)
        text = "".join(lines)
        assert 'audience = "https://test.salesforce.com"' in text
        assert 'object_endpoint = "solar_panel_event_7f3a"' in text
        # The key path pasted is the one of the pair given (keygen's naming), not a fixed path (issue #12).
        assert f'private_key_path = "{tmp_path / "jwt.key"}"' in text
        url = next(line.split()[-1] for line in lines if "listening on" in line)
        async with aiohttp.ClientSession() as http:
            # No token: a 401 from the endpoint name the connector knows, a 404 under the schema name.
            resp = await http.post(url + "/api/v1/ingest/sources/solar_agent/solar_panel_event_7f3a",
                                   json={"data": [{"event_id": "a"}]})
            assert resp.status == 401
            dropped = await (await http.get(url + "/__emulator/dropped")).json()
            assert dropped == {"count": 0, "records": []}
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.stdout.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_object_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    _, pub = make_keypair(tmp_path)
    (tmp_path / "jwt.pub").write_bytes(pub)
    for bad in ("no-equals-sign", "x=not_an_object"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "emulator", "--public-key", str(tmp_path / "jwt.pub"),
            "--object-endpoint", bad, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 2, err
        assert b"Error:" in err and b"Try:" in err
