"""Property: whatever faults the wire throws, a retry loop around ``deliver`` lands every record
exactly once in the table (at-least-once on the wire, exactly-once by primary key)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datacloud import StreamingClient, TokenProvider
from agent.emulator import Emulator, Faults
from agent.errors import RetryableError, ThrottledError
from tests.datacloud.conftest import make_config, make_rows

fault = st.builds(
    Faults,
    status_rates=st.dictionaries(st.sampled_from([429, 500, 502, 503]), st.floats(0.0, 0.2), max_size=2),
    reset_rate=st.floats(0.0, 0.3),
    lose_response_rate=st.floats(0.0, 0.3),
    outage=st.sampled_from([False, False, False, True]),
    seed=st.integers(0, 2**16),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(faults=st.lists(fault, min_size=1, max_size=6), n=st.integers(1, 300))
async def test_faults_never_lose_or_duplicate(emu: Emulator, key_files: tuple[Path, bytes],
                                              faults: list[Faults], n: int) -> None:
    rows = make_rows(n)
    keys = {k for k, _ in rows}
    before = emu.store.keys()
    async with aiohttp.ClientSession() as session:
        tokens = TokenProvider(make_config(emu.url, key_files[0]), session)
        # Small bodies: a fault can hit a batch half way through.
        client = StreamingClient(tokens, session, "solar_agent", "solar_panel_event", max_body_bytes=20_000)
        pending = list(rows)
        for attempt in range(len(faults) + 1):
            emu.set_faults(faults[attempt] if attempt < len(faults) else Faults())
            try:
                result = await client.deliver(pending)
            except (RetryableError, ThrottledError):
                continue  # the drain would back off; the whole batch is resent (idempotent)
            assert not result.rejected
            if result.error is not None:
                # Settled before a later body failed: only the rest is sent again.
                assert isinstance(result.error, (RetryableError, ThrottledError)), result.error
                assert set(result.accepted_ids) < {k for k, _ in pending}
                pending = [r for r in pending if r[0] not in set(result.accepted_ids)]
                continue
            assert sorted(result.accepted_ids) == sorted(k for k, _ in pending)
            break
        else:  # pragma: no cover - the last attempt runs without faults
            raise AssertionError("never delivered")
    await emu.wait_landed(len(before) + n, timeout=10)
    landed = emu.store.keys() - before
    assert landed == keys  # nothing lost, nothing extra
    counts = emu.store.write_counts()
    assert all(counts[k] >= 1 for k in keys)
