"""The technician's commands and the gateway status records: doctor checks the connector knows the
status object, check-config says where the records go, status shows them, and outbox export writes
them to files of their own object."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from agent.cli.doctor import run
from agent.clock import ClockGuard
from agent.config import load_config
from agent.fleet import STATUS_FIELDS, STATUS_OBJECT
from agent.outbox import Outbox
from agent.records import default_schema_path
from tests.cli.conftest import cli, running_agent, write_config
from tests.cli.test_doctor import lines_by_check
from tests.cli.test_status_drain import records
from tests.outbox.test_objects import status_records
from tests.peers.emulator import make_keypair, running_emulator
from tests.waiting import wait_for


def _without_status_object(tmp_path: Path) -> Path:
    doc = yaml.safe_load(default_schema_path().read_text())
    del doc["components"]["schemas"][STATUS_OBJECT]
    path = tmp_path / "one-object.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("connector_knows_it", [True, False])
async def test_doctor_checks_the_status_object_of_the_connector(tmp_path: Path, connector_knows_it: bool,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    schema = {} if connector_knows_it else {"schema_path": _without_status_object(tmp_path)}
    async with running_emulator(tmp_path, public_key_pem=public, **schema) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, fleet_interval_seconds=300)
        code = await run(str(site.config), timeout_seconds=10, clock=ClockGuard(assume_synced=True))
        assert emu.store.counts() == {}                      # dry runs only
    out = capsys.readouterr().out
    checks = lines_by_check(out)
    assert checks["datacloud test record"] == "PASS"
    if connector_knows_it:
        assert checks["datacloud status record"] == "PASS" and code == 0
    else:
        assert checks["datacloud status record"] == "FAIL" and code == 1
        assert f"upload the schema file shipped with this version (it holds {STATUS_OBJECT})" in out


async def test_check_config_says_where_the_status_records_go(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path, fleet_interval_seconds=300)
    assert await cli("check-config", site.config) == 0
    out = capsys.readouterr().out
    assert "Gateway status records: one every 300s ([fleet] interval_seconds) to object endpoint " \
           "solar_gateway_status (datacloud.status_object_endpoint)." in out
    assert "[fleet]\ninterval_seconds = 300" in out


async def test_status_shows_the_reports_of_a_running_agent(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=0.2,
                            fleet_interval_seconds=1)
        async with running_agent(site) as agent:
            await wait_for(lambda: emu.store.count(STATUS_OBJECT) >= 2, 20, "two status rows landed")
            assert agent.fleet.reports >= 2
            assert await cli("status", "--config", site.config) == 0
            out = capsys.readouterr().out
            assert await cli("status", "--config", site.config, "--json") == 0
            doc = capsys.readouterr().out
        row = emu.store.rows(obj=STATUS_OBJECT)[0]
    line = next(x for x in out.splitlines() if x.startswith("fleet"))
    assert "solar_gateway_status every 1s:" in line and "reported, last interval 20" in line and "lane " in line
    assert '"fleet"' in doc and '"totals"' in doc
    assert set(row) == set(STATUS_FIELDS) and row["site_id"] == "cli-site" and row["health_level"]


async def test_export_writes_each_object_to_files_of_its_own(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path)
    async with Outbox(load_config(site.config).outbox) as ob:
        await ob.append(records(5))
        await ob.append(status_records(3))
    out_dir = tmp_path / "export"
    assert await cli("outbox", "--config", site.config, "export", "--out", out_dir) == 0
    printed = capsys.readouterr().out
    assert "exported 5 rows" in printed and "and 3 solar_gateway_status rows" in printed
    status_files = sorted(out_dir.glob("solar_gateway_status-*.csv"))
    assert len(status_files) == 1 and len(sorted(out_dir.glob("solar_panel_event-*.csv"))) == 1
    table = list(csv.reader(io.StringIO(status_files[0].read_text())))
    assert tuple(table[0]) == STATUS_FIELDS and len(table) == 4
    manifest = (out_dir / "MANIFEST.txt").read_text()
    assert "object     solar_gateway_status" in manifest and "one job per object" in manifest
    assert await cli("outbox", "--config", site.config, "peek", "-n", "10") == 0
    assert printed.count("object solar_gateway_status") == 0
    assert capsys.readouterr().out.count("object solar_gateway_status") == 3
