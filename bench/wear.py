"""SD-card wear: what the agent writes to storage per reading, on the reference and a small site.

``python -m bench.wear [--quick]`` prints the rows; ``run(quick)`` returns them for results.md.

Gateways run on SD cards and eMMC, which wear out by the bytes written to them. Each site runs
the real agent with the shipped defaults (bench/agent.py: devices, emulator and agent in
processes of their own); after a warm-up, the window starts and ends with a WAL checkpoint in the
agent, and the agent's ``/proc/<pid>/io`` ``write_bytes`` over it (every byte its threads sent to
the storage layer: WAL frames, their copy into the main file, the -shm index) is compared with
the payload bytes it committed in the same window (the JSON records, counted by the runtime's
commit hook). The reference site is 100 inverters at 1 Hz; the small site 10 inverters read every
5 s. The low-latency setting of the reference site is measured by bench/agent.py.
"""

from __future__ import annotations

import sys
from typing import Any, Final

TARGET_RATIO: Final = 3.0
# Western Digital rates its WD Purple SC QD101 microSD cards at 512 program/erase cycles of their
# capacity ("up to 512 TB written" for the 1 TB card; Tom's Hardware, 2022-06, "Western Digital Has
# 1TB microSD Card for Surveillance: 16 Years Lifespan"): about 16 TB written for the 32 GB card,
# an endurance-rated card. Consumer cards are rated lower, or not at all.
CARD_GB: Final = 32
CARD_TBW: Final = 16.0
CARD_SOURCE: Final = "WD Purple SC QD101 32 GB, rated 512 P/E cycles = ~16 TB written"

SMALL_SITE_POLL_SECONDS: Final = 5.0


def endurance_note(bytes_per_day: float) -> str:
    years = CARD_TBW * 1e12 / bytes_per_day / 365
    return (f"a {CARD_GB} GB endurance card ({CARD_SOURCE}) lasts {years:,.1f} years at this rate, "
            "writes by the agent alone")


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Reference site: 30 s warm-up, 240 s window; small site: 30 s and 600 s (quick: 15/60, 15/120)."""
    from bench.agent import Site, measure, wear_rows

    reference = Site()
    small = Site(buses=1, units_per_bus=10, poll_seconds=SMALL_SITE_POLL_SECONDS)
    rows: list[dict[str, Any]] = []
    for site, warmup, window in ((reference, 15.0 if quick else 30.0, 60.0 if quick else 240.0),
                                 (small, 15.0 if quick else 30.0, 120.0 if quick else 600.0)):
        m = measure(warmup, window, site)
        rows += wear_rows(m, site.label())
    return rows


def _main() -> None:
    from bench._common import console_line
    for row in run(quick="--quick" in sys.argv):
        print(console_line(row))
        if row.get("note"):
            print(f"      note: {row['note']}")


if __name__ == "__main__":
    _main()
