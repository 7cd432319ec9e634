"""Helpers of the system test (tests/system/run): read the outbox and the emulator's table, reconcile.

Standard library only, run with Debian's /usr/bin/python3, so the helper shares nothing with the
package under test. Not a pytest module: ``make system-test`` runs it inside the box.

What "nothing lost" means here, without a hook inside the agent (it runs under systemd):

* MQTT: a mosquitto_sub witness with its own persistent session records every cycle the broker
  accepted (``status/last_update`` carries the cycle's unix second). The OpenDTU profile turns a
  cycle into three readings (the inverter and its two strings) stamped with that second, so every
  witnessed cycle must land as those three rows.
* SunSpec: a poll has no outside witness, so the test snapshots the outbox's queue (event ids the
  agent has committed) right before each restart, kill, upgrade; every snapshotted id must land.
* Nothing altered: with ``--values`` (run by the package's own interpreter), every landed OpenDTU
  reading of a witnessed cycle must carry the values published for that cycle (``opendtu.cycle``:
  the simulator's frames, which share nothing with the agent's MQTT source, with an energy counter
  that differs from cycle to cycle).

Subcommands (all print one line or a short report; exit 1 when a reconciliation fails):
  snapshot DB OUT          event ids now queued in the outbox -> OUT (one per line)
  count DB TABLE           rows of an outbox table (events, held, dead_letters), or "leased":
                           queued rows a delivery in flight holds
  landed URL [DEVICE]      rows in the emulator's table (of DEVICE)
  dump URL OUT             the emulator's table as JSON (kept with the logs)
  restamped URL            landed rows with clock_quality "restamped"
  faults URL JSON          set the emulator's faults (e.g. '{"outage": true}')
  reconcile URL --witness FILE --snapshot FILE... --devices A,B --opendtu SERIAL [--values]
  exposure                 the overall exposure from `systemd-analyze security` text on stdin
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote


def _outbox(db: str) -> sqlite3.Connection:
    # Read-only next to the running agent: WAL readers see committed rows and never block it.
    return sqlite3.connect(f"file:{quote(db)}?mode=ro", uri=True, timeout=10)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def _records(url: str) -> list[dict[str, Any]]:
    body = _get(f"{url}/__emulator/records?limit=100000000")
    records: list[dict[str, Any]] = body["records"]
    return records


def _iso(t_s: int) -> str:
    # The schema's yyyy-MM-ddTHH:mm:ss.SSSZ, as the agent writes date_time.
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t_s))


def snapshot(db: str, out: str) -> int:
    with _outbox(db) as conn:
        # Readings only: the gateway's status records (object solar_gateway_status, since outbox
        # migration 4) land in a table of their own, not among the records compared here.
        has_object = any(r[1] == "object" for r in conn.execute("PRAGMA table_info(events)"))
        ids = [r[0] for r in conn.execute("SELECT event_id FROM events" + (" WHERE object IS NULL" if has_object
                                                                             else ""))]
    Path(out).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    print(len(ids))
    return 0


_COUNTS = {
    "events": "SELECT count(*) FROM events",
    "leased": "SELECT count(*) FROM events WHERE lease_id IS NOT NULL",
    "held": "SELECT count(*) FROM held",
    "dead_letters": "SELECT count(*) FROM dead_letters",
}


def count(db: str, what: str) -> int:
    if what not in _COUNTS:
        raise SystemExit(f"unknown count {what!r}; one of {', '.join(_COUNTS)}")
    with _outbox(db) as conn:
        print(conn.execute(_COUNTS[what]).fetchone()[0])
    return 0


def dump(url: str, out: str) -> int:
    rows = _records(url)
    Path(out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(len(rows))
    return 0


def landed(url: str, device: str | None) -> int:
    rows = _records(url)
    print(sum(1 for r in rows if device is None or r.get("device_id") == device))
    return 0


def restamped(url: str) -> int:
    print(sum(1 for r in _records(url) if r.get("clock_quality") == "restamped"))
    return 0


def faults(url: str, body: str) -> int:
    req = urllib.request.Request(f"{url}/__emulator/faults", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.read().decode())
    return 0


def witnessed_cycles(path: str) -> set[tuple[str, int]]:
    """(serial, unix second) of every OpenDTU cycle the witness saw."""
    cycles: set[tuple[str, int]] = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"solar/([^/]+)/status/last_update (\d+)", line.strip())
        if m:
            cycles.add((m[1], int(m[2])))
    return cycles


def _wrong_values(rows: list[dict[str, Any]], cycles: set[tuple[str, int]], serial: str) -> list[str]:
    """Landed readings of witnessed cycles whose values are not the ones published for that cycle."""
    from opendtu import cycle  # the publisher's own frames; needs the package's python

    wrong: list[str] = []
    landed_by_key = {(str(r.get("device_id")), str(r.get("date_time"))): r for r in rows}
    for s, t in sorted(cycles):
        if s != serial:
            continue
        for exp in cycle(s, t)[1]:
            row = landed_by_key.get((exp.device_id, _iso(t)))
            if row is None:
                continue        # counted as lost elsewhere
            diff = {k: (row.get(k), v) for k, v in exp.metrics.items()
                    if not (isinstance(v, float) and isinstance(row.get(k), float)
                            and math.isclose(row[k], v, rel_tol=1e-9, abs_tol=1e-6)) and row.get(k) != v}
            if diff:
                wrong.append(f"{exp.device_id} {_iso(t)} landed/published {diff}")
    return wrong


def reconcile(url: str, witness: str, snapshots: list[str], devices: list[str], serial: str,
              values: bool = False) -> int:
    rows = _records(url)
    ids = {str(r["event_id"]) for r in rows}
    by_reading: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        by_reading[(str(r.get("device_id")), str(r.get("date_time")))].add(str(r["event_id"]))

    committed: set[str] = set()
    for snap in snapshots:
        committed |= {line for line in Path(snap).read_text(encoding="utf-8").split() if line}
    lost_committed = sorted(committed - ids)

    mqtt_devices = {serial, f"{serial}/pv1", f"{serial}/pv2"}
    cycles = witnessed_cycles(witness)
    expected_mqtt = {(dev, _iso(t)) for s, t in cycles if s == serial for dev in mqtt_devices}
    landed_mqtt = {k for k in by_reading if k[0] in mqtt_devices}
    lost_mqtt = sorted(expected_mqtt - landed_mqtt)
    invented_mqtt = sorted(landed_mqtt - expected_mqtt)

    known = set(devices) | mqtt_devices
    foreign = sorted({dev for dev, _ in by_reading} - known)
    duplicates = sorted(k for k, v in by_reading.items() if len(v) > 1)
    per_device: dict[str, int] = defaultdict(int)
    for dev, _ in by_reading:
        per_device[dev] += 1

    print(f"landed rows            {len(ids)}")
    for dev in sorted(per_device):
        print(f"  {dev:<24} {per_device[dev]}")
    print(f"committed (snapshots)  {len(committed)}, lost {len(lost_committed)}")
    print(f"MQTT cycles witnessed  {len(expected_mqtt) // 3} -> {len(expected_mqtt)} readings, "
          f"lost {len(lost_mqtt)}, invented {len(invented_mqtt)}")
    wrong = _wrong_values(rows, cycles, serial) if values else []
    if values:
        print(f"MQTT values altered    {len(wrong)} (landed values differ from the published cycle's)")
    print(f"duplicate readings     {len(duplicates)} (same device and time under two event ids)")
    print(f"unknown devices        {len(foreign)}")
    first = {(str(r.get("device_id")), str(r.get("date_time"))): r for r in rows}
    for label, items in (("lost (committed)", lost_committed), ("lost (MQTT)", lost_mqtt),
                         ("invented (MQTT)", invented_mqtt), ("altered (MQTT)", wrong), ("duplicate", duplicates),
                         ("unknown", foreign)):
        for item in items[:10]:
            row = first.get(item) if isinstance(item, tuple) else None
            more = f" clock_quality={row.get('clock_quality')} event_id={row.get('event_id')}" if row else ""
            print(f"  {label}: {item}{more}")
    ok = not (lost_committed or lost_mqtt or invented_mqtt or wrong or duplicates or foreign) and bool(expected_mqtt)
    return 0 if ok else 1


def exposure() -> int:
    text = sys.stdin.read()
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
    if not m:
        print("no exposure line")
        return 1
    print(m[1])
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("db")
    s.add_argument("out")
    s = sub.add_parser("count")
    s.add_argument("db")
    s.add_argument("table")
    s = sub.add_parser("landed")
    s.add_argument("url")
    s.add_argument("device", nargs="?")
    s = sub.add_parser("dump")
    s.add_argument("url")
    s.add_argument("out")
    s = sub.add_parser("restamped")
    s.add_argument("url")
    s = sub.add_parser("faults")
    s.add_argument("url")
    s.add_argument("json")
    s = sub.add_parser("reconcile")
    s.add_argument("url")
    s.add_argument("--witness", required=True)
    s.add_argument("--snapshot", action="append", default=[])
    s.add_argument("--devices", required=True)
    s.add_argument("--opendtu", required=True)
    s.add_argument("--values", action="store_true", help="also compare the values (needs the package's python)")
    sub.add_parser("exposure")
    a = p.parse_args(argv)
    if a.cmd == "snapshot":
        return snapshot(a.db, a.out)
    if a.cmd == "count":
        return count(a.db, a.table)
    if a.cmd == "landed":
        return landed(a.url, a.device)
    if a.cmd == "dump":
        return dump(a.url, a.out)
    if a.cmd == "restamped":
        return restamped(a.url)
    if a.cmd == "faults":
        return faults(a.url, a.json)
    if a.cmd == "reconcile":
        return reconcile(a.url, a.witness, a.snapshot, a.devices.split(","), a.opendtu, a.values)
    return exposure()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
