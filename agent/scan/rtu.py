"""``scan rtu``: find the line settings of an RS-485 bus, then every SunSpec unit on it, in bounded time.

Sweeping 247 unit ids at 12 line settings would take over ten minutes at a quarter of a second per
silent id. The two facts that make it short: a unit answers only at its own line settings (at another baud
rate it cannot even decode the request), and a bus has one set of settings. So:

1. Detect: at each baud rate and parity, probe a few common unit ids (1, 2, 3, 126, 247, or the ids asked
   for) at 40000. A valid answer (even a Modbus exception) means these settings are the bus's;
   garbled bytes mean someone talks at other settings (parity) or two units collide; silence means
   nobody, or not at these settings; a valid frame from the unit asked before means that unit answers
   after the timeout (right settings, slow unit: it is kept and reported). When no setting got an
   answer, the common ids are probed once more at 0 and 50000 (a unit silent at 40000 whose map is
   elsewhere), and then the sweep asks every base too.
2. Sweep: only at the settings that answered, every unit id asked for (1-247 by default), one probe each
   at 40000 (``all_bases``: also 0 and 50000 for the silent ones, three times slower).
3. Identify every unit that answered, with a longer timeout: SunSpec discovery at 40000, 0 and 50000 (as
   the agent does) and the common model (manufacturer, model, serial).

Worst case (``estimate_seconds``): detection probes x timeout, plus one sweep. Read-only: FC3 only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from agent.errors import SourceError
from agent.scan.modbus_probe import IDENTIFY_TIMEOUT_SECONDS, SUNSPEC_BASES, open_rtu, port_problem
from agent.scan.progress import Progress
from agent.scan.results import FoundUnit, LineSettings, ModbusScan

DEFAULT_BAUDRATES: Final = (9600, 19200, 38400, 115200)
DEFAULT_PARITIES: Final = ("N", "E", "O")
COMMON_UNITS: Final = (1, 2, 3, 126, 247)
DEFAULT_TIMEOUT_SECONDS: Final = 0.25
ALL_UNITS: Final = tuple(range(1, 248))


@dataclass(frozen=True, slots=True)
class RtuPlan:
    """What to scan. ``settings`` are tried in order (the SunSpec default 9600 8N1 first)."""

    port: str
    settings: tuple[LineSettings, ...]
    units: tuple[int, ...] = ALL_UNITS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    all_bases: bool = False

    @property
    def detect_units(self) -> tuple[int, ...]:
        """The unit ids probed to detect the settings: the common ones among those asked for."""
        if len(self.units) <= len(COMMON_UNITS):
            return self.units
        common = tuple(u for u in COMMON_UNITS if u in self.units)
        return common or self.units[:len(COMMON_UNITS)]

    def estimate_seconds(self) -> float:
        """Worst case for one live setting: every detection probe and every sweep probe times out."""
        detect = len(self.settings) * len(self.detect_units) * self.timeout_seconds
        sweep = len(self.units) * self.timeout_seconds * (len(SUNSPEC_BASES) if self.all_bases else 1)
        return detect * len(SUNSPEC_BASES) + sweep


def line_settings(baudrates: Sequence[int] = DEFAULT_BAUDRATES,
                  parities: Sequence[str] = DEFAULT_PARITIES) -> tuple[LineSettings, ...]:
    """Every combination, parity by parity (N first: most inverters ship with 8N1)."""
    return tuple(LineSettings(b, p) for p in parities for b in baudrates)


@dataclass(slots=True)
class Heard:
    """What the detection probes at one setting heard."""

    answered: list[int] = field(default_factory=list)     # unit ids that gave a valid frame
    garbled: int = 0


def live_settings(heard: dict[LineSettings, Heard]) -> list[LineSettings]:
    """The settings worth a sweep: those where a unit answered, most answers first (then the try order)."""
    order = list(heard)
    live = [s for s in order if heard[s].answered]
    return sorted(live, key=lambda s: (-len(heard[s].answered), order.index(s)))


async def scan_rtu(plan: RtuPlan, progress: Progress) -> ModbusScan:
    result = ModbusScan("rtu", plan.port)
    if not await asyncio.to_thread(os.path.exists, plan.port):
        result.error = f"{plan.port}: no such serial port"
        result.hint = "list the adapters with ls -l /dev/serial/by-id/ and pass one with --port"
        return result
    problem = await asyncio.to_thread(port_problem, plan.port)
    if problem is not None:
        result.error, result.hint = problem.message, problem.hint or ""
        return result
    progress.note(f"scanning {plan.port}: {len(plan.settings)} line settings x unit ids "
                  f"{_ranges(plan.detect_units)} to detect, then {len(plan.units)} unit ids at the settings "
                  f"that answer; at most about {plan.estimate_seconds():.0f}s")
    heard = await _detect(plan, (SUNSPEC_BASES[0],), result, progress)
    if not live_settings(heard):
        progress.note("no answer at 40000: probing the same unit ids at 0 and 50000")
        heard = await _detect(plan, SUNSPEC_BASES[1:], result, progress)
        # Units that answer only elsewhere: the others on this bus may well be alike.
        plan = replace(plan, all_bases=True)
    result.garbled = [str(s) for s, h in heard.items() if h.garbled and not h.answered]
    live = live_settings(heard)
    found: dict[LineSettings, list[FoundUnit]] = {}
    for settings in live:
        found[settings] = await _sweep(plan, settings, heard[settings], result, progress)
    if live:
        best = max(live, key=lambda s: (sum(u.sunspec for u in found[s]), len(found[s]), -live.index(s)))
        result.settings = best
        result.units = found[best]
        result.other_settings = {str(s): [u.unit_id for u in found[s]] for s in live if s != best}
    result.elapsed_s = round(progress.elapsed(), 1)
    progress.done()
    return result


async def _detect(plan: RtuPlan, bases: tuple[int, ...], result: ModbusScan,
                  progress: Progress) -> dict[LineSettings, Heard]:
    heard: dict[LineSettings, Heard] = {}
    for settings in plan.settings:
        if str(settings) in result.refused:
            continue
        h = heard[settings] = Heard()
        try:
            async with open_rtu(plan.port, settings, plan.timeout_seconds) as link:
                for unit in plan.detect_units:
                    progress.status(f"{settings}: probing unit {unit} at {'/'.join(map(str, bases))}")
                    got = await link.first_answer(unit, bases)
                    if got.answered:
                        h.answered.append(unit)
                        progress.note(f"{settings}: unit {unit} answers ({got.detail or 'registers'})")
                        break           # these are the bus's settings: the sweep finds the rest
                    if got.late_unit is not None:
                        h.answered.append(_slow(result, got.late_unit, plan, progress))
                        break
                    if got.kind == "garbled":
                        h.garbled += 1
                result.probes += link.probes
        except SourceError as exc:
            result.refused[str(settings)] = exc.message
            progress.note(f"{settings}: skipped ({exc.message})")
            continue
        if h.garbled and not h.answered:
            progress.note(f"{settings}: garbled replies: someone talks at other settings (parity?), "
                          "or two units share an id")
    return heard


async def _sweep(plan: RtuPlan, settings: LineSettings, heard: Heard, result: ModbusScan,
                 progress: Progress) -> list[FoundUnit]:
    bases = SUNSPEC_BASES if plan.all_bases else SUNSPEC_BASES[:1]
    answered: list[int] = list(heard.answered)
    units: list[FoundUnit] = []
    try:
        async with open_rtu(plan.port, settings, plan.timeout_seconds) as link:
            for n, unit in enumerate(plan.units, start=1):
                if unit in answered:
                    continue
                progress.status(f"{settings}: unit {unit} ({n}/{len(plan.units)}), {len(answered)} answered")
                got = await link.first_answer(unit, bases)
                if got.answered:
                    answered.append(unit)
                    progress.note(f"{settings}: unit {unit} answers")
                elif got.late_unit is not None and got.late_unit not in answered:
                    answered.append(_slow(result, got.late_unit, plan, progress))
            result.probes += link.probes
        # A unit that answered is worth waiting for: its map is read with a longer timeout.
        async with open_rtu(plan.port, settings, max(plan.timeout_seconds, IDENTIFY_TIMEOUT_SECONDS)) as link:
            for unit in sorted(answered):
                progress.status(f"{settings}: reading the SunSpec map of unit {unit}")
                units.append(await link.identify(unit))
            result.probes += link.probes
    except SourceError as exc:
        result.refused[str(settings)] = exc.message
        progress.note(f"{settings}: sweep stopped ({exc.message})")
    return units


def _slow(result: ModbusScan, unit: int, plan: RtuPlan, progress: Progress) -> int:
    if unit not in result.slow:
        result.slow.append(unit)
        progress.note(f"unit {unit} answers after {plan.timeout_seconds:g}s: it is found, but sweep with a longer "
                      "--timeout")
    return unit


def describe(u: FoundUnit) -> str:
    """One line per unit for the technician."""
    if not u.sunspec:
        return f"unit {u.unit_id}: answers Modbus, {u.note}"
    who = " ".join(x for x in (u.manufacturer, u.model) if x) or "unnamed device"
    models = ", ".join(map(str, u.models))
    extra = f"; {u.note}" if u.note else ""
    also = f"; also answers as unit {_ranges(u.also_unit_ids)}" if u.also_unit_ids else ""
    return (f"unit {u.unit_id}: {who}, serial {u.serial or '-'}, SunSpec models {models} at {u.base} "
            f"-> device {u.device_id}{also}{extra}")


def _ranges(units: Sequence[int]) -> str:
    """``1-3, 126, 247``."""
    out: list[str] = []
    run: list[int] = []
    for u in sorted(units):
        if run and u == run[-1] + 1:
            run.append(u)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [u]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(out)


__all__ = ["ALL_UNITS", "COMMON_UNITS", "DEFAULT_BAUDRATES", "DEFAULT_PARITIES", "DEFAULT_TIMEOUT_SECONDS", "Heard",
           "RtuPlan", "describe", "line_settings", "live_settings", "scan_rtu"]
