"""The demo scenario, in-process at reduced scale: streaming, outages, a bulk backfill, reconciliation."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.demo import Demo

pytestmark = pytest.mark.slow


async def test_demo_reconciles_and_uses_the_bulk_lane(tmp_path: Path) -> None:
    out = io.StringIO()
    demo = Demo(tmp_path, duration_s=20, out=out)
    rc = await demo.run()
    text = out.getvalue()
    assert rc == 0, text
    assert "PASS: nothing lost, nothing invented, nothing duplicated" in text, text
    # The long outage crossed bulk_after: part of the backlog went through a bulk job.
    bulk_line = next(line for line in text.splitlines() if "landed rows" in line)
    bulk = int(bulk_line.split("bulk")[-1].strip(" )"))
    assert bulk > 0, text
    landed = demo.committed & demo_landed(tmp_path)
    assert landed == demo.committed and len(demo.committed) > 100
    # The gateway reported itself all along, the long outage included, and each row landed once.
    status = demo_landed(tmp_path, "solar_gateway_status")
    assert set(demo.status_committed) <= status and len(status) >= 8, text
    assert sum(demo.status_committed.values()) >= 2, text          # written while Data Cloud was unreachable
    assert "Gateway status rows in Data Cloud (solar_gateway_status" in text, text
    assert "during outage" in text, text


def demo_landed(workdir: Path, obj: str = "solar_panel_event") -> set[str]:
    import sqlite3
    conn = sqlite3.connect(workdir / "datacloud.db")
    try:
        return {r[0] for r in conn.execute("SELECT pk FROM landed_objects WHERE object = ?", (obj,))}
    finally:
        conn.close()
