"""The tree stays lint-clean and type-clean: ruff on the code, tests and bench, mypy --strict on agent/.

Both tools read their settings from pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``), so they run
from the repository root with this interpreter, exactly as ``make``/CI would run them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A cold mypy run over agent/ takes a few seconds here; the bound only catches a hung tool.
TIMEOUT_SECONDS = 300


def _run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this interpreter ({sys.executable}); "
                    "install the test extra: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, check=False)


@pytest.mark.parametrize(
    ("module", "args"),
    [
        pytest.param("ruff", ("check", "--output-format=concise", "agent", "tests", "bench"), id="ruff"),
        pytest.param("mypy", ("agent",), id="mypy-strict"),
    ],
)
def test_tool_passes(module: str, args: tuple[str, ...]) -> None:
    proc = _run_tool(module, *args)
    assert proc.returncode == 0, (
        f"`python -m {module} {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )


def test_mypy_runs_strict() -> None:
    # The mypy test above is only worth something while the config asks for --strict.
    with (ROOT / "pyproject.toml").open("rb") as fh:
        mypy_cfg = tomllib.load(fh)["tool"]["mypy"]
    assert mypy_cfg.get("strict") is True, mypy_cfg
