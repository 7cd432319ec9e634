"""Shared by the benchmarks: the machine description, targets and the results.md table.

A benchmark module exposes ``run(quick: bool = False) -> list[dict]``; each row has ``name``,
``ours``, ``raw``, ``ratio`` (ours relative to raw, or None) and ``unit``, and may carry a
``target``: a number (an upper bound, ``ours <= target``) or a string such as ``"<= 60"`` or
``">= 1000"``. A row without one may state it in its name: ``(target <= 15 s for 1M)``. A
``ratio_target`` (a string such as ``">= 0.9"``) checks the ratio instead of the figure.
Optional ``note`` (shown under the table) and ``skipped`` (a reason: the row was not measured).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

Row = Mapping[str, Any]

_TARGET_IN_NAME: Final = re.compile(r"target\s*(<=|>=|<|>|==)\s*(-?[\d.,_]+)")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram() -> str:
    m = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return f"{int(m.group(1)) / 1024 / 1024:.1f} GiB" if m else "unknown"


def _disk(path: Path) -> str:
    """File system, device and whether it spins, for the directory the benchmarks write to."""
    if shutil.which("findmnt") is None:
        return "unknown"
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)], capture_output=True,
                             text=True, timeout=5, check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if len(out) < 2:
        return "unknown"
    source, fstype = out[0], out[1]
    dev = Path(source).name
    rot = _read(f"/sys/class/block/{dev}/queue/rotational").strip() or _read(
        f"/sys/class/block/{re.sub(r'p?[0-9]+$', '', dev)}/queue/rotational").strip()
    kind = {"0": "rotational=0 (SSD)", "1": "rotational=1 per the kernel (virtio disks report 1 too)"}.get(
        rot, "media unknown")
    return f"{fstype} on {source}, {kind}"


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("RAM", _ram()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        ("SQLite", sqlite3.sqlite_version),
        ("disk (temp dir)", f"{tmp}: {_disk(tmp)}"),
        ("disk (repo)", f"{Path.cwd()}: {_disk(Path.cwd())}"),
    ]


def target_of(row: Row) -> tuple[str, float] | None:
    """(operator, bound) from the row's ``target`` or from ``target <= N`` in its name."""
    t = row.get("target")
    if isinstance(t, bool):
        return None
    if isinstance(t, int | float):
        return "<=", float(t)
    text = f"target {t}" if isinstance(t, str) else str(row.get("name", ""))
    m = _TARGET_IN_NAME.search(text)
    if not m:
        return None
    return m.group(1), float(m.group(2).replace(",", "").replace("_", ""))


def _ratio_verdict(row: Row) -> str:
    m = _TARGET_IN_NAME.search(f"target {row['ratio_target']}")
    if not m:
        return ""
    op, bound = m.group(1), float(m.group(2).replace(",", "").replace("_", ""))
    ratio = row.get("ratio")
    if row.get("skipped") or not isinstance(ratio, int | float):
        return "✘ not measured"
    ok = {"<=": ratio <= bound, ">=": ratio >= bound, "<": ratio < bound, ">": ratio > bound,
          "==": ratio == bound}[op]
    return f"{'✔' if ok else '✘'} ratio {op} {_num(bound)}"


def verdict(row: Row) -> str:
    """✔ met, ✘ missed, ✘ (not measured) for a skipped row with a target, blank without a target."""
    if row.get("ratio_target"):
        return _ratio_verdict(row)
    target = target_of(row)
    if target is None:
        return ""
    ours = row.get("ours")
    if row.get("skipped") or not isinstance(ours, int | float):
        return "✘ not measured"
    op, bound = target
    ok = {"<=": ours <= bound, ">=": ours >= bound, "<": ours < bound, ">": ours > bound,
          "==": ours == bound}[op]
    return f"{'✔' if ok else '✘'} {op} {_num(bound)}"


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == int(v) and abs(v) >= 100:
            return f"{int(v):,}"
        return f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3g}"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Row]) -> list[str]:
    """A markdown table of one benchmark's rows."""
    lines = ["| benchmark | ours | raw / peer | ratio | unit | target |", "|---|---:|---:|---:|---|---|"]
    notes: list[str] = []
    for r in rows:
        ours = f"skipped: {r['skipped']}" if r.get("skipped") else _num(r.get("ours"))
        lines.append("| " + " | ".join(_cell(x) for x in (
            str(r.get("name", "")), ours, _num(r.get("raw")), _num(r.get("ratio")), str(r.get("unit", "")),
            verdict(r))) + " |")
        if r.get("note"):
            notes.append(f"- {r['name']}: {r['note']}")
    return lines + (["", *notes] if notes else [])


def console_line(r: Row) -> str:
    ours = f"skipped ({r['skipped']})" if r.get("skipped") else _num(r.get("ours"))
    return (f"  {str(r.get('name', ''))[:70]:70} {ours:>14} {_num(r.get('raw')):>12} "
            f"{_num(r.get('ratio')):>6} {r.get('unit', '')} {verdict(r)}")
