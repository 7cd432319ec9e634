"""The peers the benchmarks run in processes of their own, and the records they all use.

* ``EmulatorProcess``: the Data Cloud emulator (no rate limit), for what needs Data Cloud's
  behaviour (logins, bulk jobs landing rows).
* ``NullSinkProcess``: an HTTP server that reads each ingest body and answers 202 ``{"accepted":
  true}``, nothing else: no parsing, no validation, no storage. It is the limit a client can be
  measured against (the emulator validates and stores, and saturates first). It also answers the
  two token endpoints with canned tokens, so the agent's own TokenProvider logs in (once, before
  any clock starts).

Each runs in a spawned process, so its CPU and memory are never the client's.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from pathlib import Path
from typing import Any

from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema

# The reference inverter's reading (SunSpec 103 with battery and meter values): ~690 B of JSON.
METRICS: dict[str, float | str] = {
    "ac_power_w": 4321.5, "ac_energy_wh": 12_345_678.0, "ac_energy_today_wh": 15_234.0, "ac_voltage_v": 231.4,
    "ac_current_a": 18.72, "ac_frequency_hz": 50.01, "ac_apparent_power_va": 4400.2,
    "ac_reactive_power_var": -120.5, "power_factor_pct": 98.2, "dc_power_w": 4480.0, "dc_voltage_v": 612.3,
    "dc_current_a": 7.31, "temperature_c": 43.25, "operating_state": "MPPT", "event_flags": 0,
    "battery_soc_pct": 87.5, "battery_voltage_v": 52.1, "battery_power_w": -1500.0,
    "grid_power_w": 220.0, "load_power_w": 2900.0,
}


def records(n: int, site: str) -> list[EncodedRecord]:
    """n encoded readings of 16 inverters, one second apart, as a source would hand them over."""
    builder = RecordBuilder(load_schema(), site_id=site, customer_id="001XX000003DHPh", agent_version="0.1.0")
    return [builder.encode(Reading(f"SunSpecInverter-SN{1000 + i % 16}", 1_700_000_000_000 + i * 1000,
                                   "sunspec-rtu", METRICS)) for i in range(n)]


def keypair(tmp: Path) -> tuple[Path, bytes]:
    """A fresh RSA key for the JWT login: (private key file, public key PEM for the emulator)."""
    from agent.keys import generate_keypair
    keys = generate_keypair(tmp / "keys")
    return keys.private_key_path, keys.public_key_pem


def _emulator_main(public_pem: bytes, conn: Any, stop: Any) -> None:
    from agent.emulator import Emulator, EmulatorSettings

    async def main() -> None:
        settings = EmulatorSettings(host="127.0.0.1", public_key_pem=public_pem, rate_limit_rps=1e9,
                                    max_jobs_per_hour=1000)
        async with Emulator(settings) as emu:
            conn.send(emu.url)
            # Parked until the parent sets the stop event (a multiprocessing Event: wait for it off the loop).
            await asyncio.to_thread(stop.wait)

    asyncio.run(main())


def _sink_main(conn: Any, stop: Any) -> None:
    from aiohttp import web

    counts = {"bodies": 0, "bytes": 0}

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        counts["bodies"] += 1
        counts["bytes"] += len(body)
        return web.json_response({"accepted": True}, status=202)

    async def main() -> None:
        app = web.Application(client_max_size=1 << 20)
        url = ""

        async def token(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"access_token": "00Dsink000000000!bench", "instance_url": url,
                                      "token_type": "Bearer", "expires_in": 7200,
                                      "issued_token_type": "urn:ietf:params:oauth:token-type:jwt"})

        async def count(request: web.Request) -> web.Response:
            return web.json_response(counts)

        app.router.add_post("/services/oauth2/token", token)
        app.router.add_post("/services/a360/token", token)
        app.router.add_post("/api/v1/ingest/sources/{source}/{object}", ingest)
        app.router.add_get("/__sink/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        conn.send(url)
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(main())


class _Peer:
    def __init__(self, target: Any, *args: Any, what: str) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=target, args=(*args, child, self._stop), daemon=True)
        self._proc.start()
        if not parent.poll(60):
            raise RuntimeError(f"the {what} process did not start")
        self.url: str = parent.recv()

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()

    def __enter__(self) -> _Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmulatorProcess(_Peer):
    def __init__(self, public_pem: bytes) -> None:
        super().__init__(_emulator_main, public_pem, what="emulator")


class NullSinkProcess(_Peer):
    def __init__(self) -> None:
        super().__init__(_sink_main, what="null sink")


def spawn(target: Any, *args: Any) -> tuple[Any, Any]:
    """Start ``target(*args, conn)`` in a spawned process; (process, the parent's end of the pipe)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    return proc, parent


def answer(proc: Any, conn: Any, timeout: float, what: str) -> Any:
    """The one message a spawned child sends back, then its exit."""
    if not conn.poll(timeout):
        proc.terminate()
        raise RuntimeError(f"{what}: no answer within {timeout:.0f} s (exit code {proc.exitcode})")
    result = conn.recv()
    proc.join(30)
    return result
