"""Tell a connector whose schema is not ours from a few bad records.

Data Cloud checks streamed records against the schema uploaded to the Ingestion API connector.
When that file is not the one this agent ships (a technician uploaded an older one), every record
is refused, each for the same reason. Dead-lettering them would move the whole outbox into the
dead letters; where the insert is fire-and-forget (documented: "processed asynchronously", feedback
per record only from ``/actions/test``) they would be dropped without a word. So:

* the drain validates one real record through ``/actions/test`` at start, after a reload (a new
  drain) and every ``VALIDATE_EVERY_SECONDS``; a refusal there is a mismatch at once;
* a batch that Data Cloud refuses entirely, every record for one reason, is a *refusal*. The
  first is deferred (its rows go back to the queue, not to the dead letters) and the next batch,
  which holds other rows, decides: refused again for the same reason, with at least
  ``MIN_SUSPECTS`` distinct records between them, it is a mismatch; accepted, the deferred rows
  were bad on their own and are dead-lettered when refused again;
* during a mismatch both lanes stop, every row stays queued, health is failed with the reason and
  a hint, and the validation runs every ``RECHECK_SECONDS`` (or at once on ``drain --now``): when
  the connector's schema is fixed, delivery resumes by itself.

Pure bookkeeping: the drain calls it and does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["MIN_SUSPECTS", "RECHECK_SECONDS", "VALIDATE_EVERY_SECONDS", "SchemaGuard", "Verdict", "reason_shape"]

VALIDATE_EVERY_SECONDS: Final = 900.0      # one /actions/test call every 15 minutes while delivering
RECHECK_SECONDS: Final = 300.0             # while stopped by a mismatch
MIN_SUSPECTS: Final = 2                    # one record refused twice is a bad record, not a schema
_MAX_REMEMBERED: Final = 100_000           # ids remembered as deferred once (bounded memory)

Verdict = Literal["dead_letter", "defer", "mismatch"]

HINT: Final = ("the schema uploaded to the Ingestion API connector is not the one this agent sends: "
               "upload the schema file shipped with this version (datacloud.schema_path, or "
               "/usr/share/solar-agent/solar_panel_event.yaml) to the connector in Data Cloud Setup; "
               "the rows stay queued and are delivered once it matches (or run `solar-agent drain --now`)")


def reason_shape(reason: str) -> str:
    """A refusal's reason without the values it quotes: one schema problem, whatever each record holds.

    everit-json-schema's messages (the format of ``/actions/test``'s causingExceptions, [VAL]) quote
    the value for a format problem, ``#/date_time: [2025-...] is not a valid date``
    (everit-org/json-schema, core/.../internal/TemporalFormatValidator.java: ``"[%s] is not a valid
    %s. Expected %s"``): a connector whose field has another format refuses every record with a
    reason of its own.
    """
    return _QUOTED.sub("[]", reason)


_QUOTED: Final = re.compile(r"\[[^\]]*\]|\"(?:[^\"\\]|\\.)*\"")


class SchemaGuard:
    """Decides what a refused batch means (see the module docstring)."""

    def __init__(self) -> None:
        self.mismatch = ""               # the reason while delivery is stopped by a mismatch
        self.detected_by = ""            # validation | refusals
        self._reason = ""
        self._strikes = 0
        self._suspects: set[str] = set()
        self._deferred: set[str] = set()
        self._accepted_since_defer = False

    def on_accepted(self) -> None:
        """Data Cloud accepted records: whatever was refused before was about those records."""
        self._reason = ""
        self._strikes = 0
        self._suspects.clear()
        self._accepted_since_defer = True

    def on_refused(self, rejected: Mapping[str, str]) -> Verdict:
        """A delivery in which Data Cloud accepted nothing; ``rejected`` is event id -> reason."""
        shapes = {reason_shape(r): r for r in rejected.values()}
        ids = set(rejected)
        if len(shapes) != 1:
            return "dead_letter"             # several reasons: the records differ, not the schema
        ((reason, example),) = shapes.items()
        if ids <= self._deferred and self._accepted_since_defer:
            self._deferred -= ids
            return "dead_letter"             # refused again after others passed: bad on their own
        if reason == self._reason:
            self._strikes += 1
        else:
            self._reason, self._strikes = reason, 1
            self._suspects.clear()
        self._suspects |= ids
        if self._strikes >= 2:
            if len(self._suspects) >= MIN_SUSPECTS:
                self.declare(example, "refusals")
                return "mismatch"
            self._strikes = 0
            return "dead_letter"
        if len(self._deferred) > _MAX_REMEMBERED:
            self._deferred.clear()
        self._deferred |= ids
        self._accepted_since_defer = False
        return "defer"

    def declare(self, reason: str, detected_by: str) -> None:
        self.mismatch = reason or "every record refused"
        self.detected_by = detected_by

    def clear(self) -> None:
        """The connector accepts our records again (a validation passed)."""
        self.mismatch = ""
        self.detected_by = ""
        self._reason = ""
        self._strikes = 0
        self._suspects.clear()
