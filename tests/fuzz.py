"""How many Hypothesis examples the fuzz tests draw: a few hundred in `make test`, 10,000 in `make soak`.

`make soak` sets ``SOLAR_AGENT_FUZZ_EXAMPLES=10000`` and selects the tests marked ``fuzz``.
"""

from __future__ import annotations

import os


def examples(default: int) -> int:
    return int(os.environ.get("SOLAR_AGENT_FUZZ_EXAMPLES", default))
