"""``scan tcp``: the SunSpec units behind one Modbus TCP endpoint (an inverter, or a gateway to an RS-485 bus).

Each unit id asked for (default 1, 2, 3, 126 and 247: the ids inverters and gateways use out of the box) is
probed at 40000, 0 and 50000 until it answers; a unit that answers is identified like ``scan rtu`` does.
Many inverters answer every unit id as themselves: units with the same manufacturer, serial and models are
one device, listed once under the lowest id with the others in ``also_unit_ids``. Read-only: FC3 only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from agent.errors import SourceError
from agent.scan.modbus_probe import SUNSPEC_BASES, open_tcp
from agent.scan.progress import Progress
from agent.scan.results import FoundUnit, ModbusScan

DEFAULT_UNITS: Final = (1, 2, 3, 126, 247)
DEFAULT_TIMEOUT_SECONDS: Final = 1.0


async def scan_tcp(host: str, port: int, units: tuple[int, ...], timeout_seconds: float,
                   progress: Progress) -> ModbusScan:
    result = ModbusScan("tcp", f"{host}:{port}")
    progress.note(f"scanning {host}:{port}: unit ids {', '.join(map(str, units))}; at most about "
                  f"{len(units) * len(SUNSPEC_BASES) * timeout_seconds:.0f}s")
    found: list[FoundUnit] = []
    try:
        async with open_tcp(host, port, timeout_seconds) as link:
            for unit in units:
                progress.status(f"{host}:{port}: probing unit {unit}")
                got = await link.first_answer(unit, SUNSPEC_BASES)
                if not got.answered:
                    continue
                progress.note(f"{host}:{port}: unit {unit} answers")
                progress.status(f"{host}:{port}: reading the SunSpec map of unit {unit}")
                found.append(await link.identify(unit))
            result.probes = link.probes
    except SourceError as exc:
        result.error = exc.message
        result.hint = exc.hint or ""
    result.units = merge_aliases(found)
    result.elapsed_s = round(progress.elapsed(), 1)
    progress.done()
    return result


def merge_aliases(units: list[FoundUnit]) -> list[FoundUnit]:
    """One entry per device: a device that answers several unit ids as itself is listed once."""
    out: list[FoundUnit] = []
    seen: dict[tuple[str, str, tuple[int, ...]], int] = {}
    for u in sorted(units, key=lambda x: x.unit_id):
        key = (u.manufacturer, u.serial, u.models)
        if u.sunspec and u.serial and key in seen:
            first = out[seen[key]]
            out[seen[key]] = replace(first, also_unit_ids=(*first.also_unit_ids, u.unit_id))
            continue
        seen[key] = len(out)
        out.append(u)
    return out


__all__ = ["DEFAULT_TIMEOUT_SECONDS", "DEFAULT_UNITS", "merge_aliases", "scan_tcp"]
