"""Broken copies of the example: each error names the file, the exact key path, the value and a hint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigErrors, config_errors, load_config
from agent.errors import ConfigError

from .conftest import EXAMPLE

Case = tuple[str, str, str, str, str | None]  # old text, new text, key path, shown value, hint part

# Each case edits the example's text (a real file, as a technician would break it).
CASES: list[Case] = [
    ("max_bytes = 2_000_000_000", 'max_bytes = "10GB"',
     "outbox.max_bytes", "(got '10GB')", "write 10_000_000_000"),
    ("min_free_bytes = 200_000_000", "min_free_bytes = -1", "outbox.min_free_bytes", "(got -1)", None),
    ("commit_interval_ms = 1000", "commit_interval_ms = -1", "outbox.commit_interval_ms", "(got -1)", "power cut"),
    ("commit_interval_ms = 1000", "commit_interval_ms = 90_000", "outbox.commit_interval_ms", "(got 90000)", None),
    ("commit_interval_ms = 1000", "commit_interval_ms = 0.5", "outbox.commit_interval_ms", "(got 0.5)", None),
    ('synchronous = "full"', 'synchronous = "FULL"', "outbox.synchronous", "(got 'FULL')", 'write "full"'),
    ('when_full = "drop_oldest"', 'when_full = "drop_newest"', "outbox.when_full", "(got 'drop_newest')",
     'write "drop_oldest"'),
    ("unit_id = 2", "unit_id = 300", "modbus[0].devices[1].unit_id", "(got 300)", "Modbus address"),
    ("unit_id = 2", "unit_id = 1", "modbus[0].devices[1].unit_id", "(got 1)", "its own Modbus address"),
    ("unit_id = 2", 'unit_id = "2"', "modbus[0].devices[1].unit_id", "(got '2')", "write 2"),
    ("baudrate = 9600", "baudrate = 9601", "modbus[0].baudrate", "(got 9601)", "9600"),
    ('transport = "rtu"', 'transport = "serial"', "modbus[0].transport", "(got 'serial')", None),
    ('port = "/dev/ttyUSB0"', 'port = ""',
     "modbus[0].port", 'is required for transport = "rtu"', "/dev/ttyUSB0"),
    ("stopbits = 1", "stopbits = true", "modbus[0].stopbits", "(got True)", None),
    ("poll_interval_seconds = 10.0", "poll_interval_seconds = 0",
     "modbus[0].poll_interval_seconds", "(got 0)",
     None),
    ("timeout_seconds = 1.0", 'timeout_seconds = "1s"', "modbus[0].timeout_seconds", "(got '1s')", "write 1"),
    ('host = "192.168.10.31"', 'host = ""', "modbus[1].host", 'is required for transport = "tcp"', None),
    ("\ntcp_port = 502", "\ntcp_port = 70000", "modbus[1].tcp_port", "(got 70000)", None),
    ('name = "carport"', 'name = "rs485"', "modbus[1].name", "(got 'rs485')", None),
    ('name = "carport"', 'name = "car port"', "modbus[1].name", "(got 'car port')", None),
    ('name = "inv-west"', 'name = "inv-east"', "modbus[0].devices[1].name", "(got 'inv-east')", "unique"),
    ("\ntcp_port = 502", "\ntcp_port = 502\nbaudrate = 19200",
     "modbus[1].baudrate", "(got 19200)", "remove it"),
    ('url = "mqtt://127.0.0.1:1883"', 'url = "http://127.0.0.1:1883"', "mqtt[0].url",
     "(got 'http://127.0.0.1:1883')", "mqtt://host:1883"),
    ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1:99999"',
     "mqtt[0].url", "not a valid URL", None),
    ('profile = "opendtu"', 'profile = "opendtux"', "mqtt[0].profile", "(got 'opendtux')", 'write "opendtu"'),
    ('topics = ["solar/#"]', 'topics = ["solar/#/x"]', "mqtt[0].topics[0]", "(got 'solar/#/x')", None),
    ('topics = ["solar/#"]', 'topics = "solar/#"', "mqtt[0].topics", "(got 'solar/#')", '["solar/#"]'),
    ("keepalive_seconds = 60", "keepalive_seconds = 60.0",
     "mqtt[0].keepalive_seconds", "(got 60.0)", "write 60"),
    ('username = "solar-agent"', 'username = ""', "mqtt[0].password_file", "needs a username", None),
    ("# ca_file = \"/etc/solar-agent/broker-ca.pem\"", 'ca_file = "ca.pem"',
     "mqtt[0].ca_file", "ca.pem", "mqtts"),
    ('profile = "opendtu"', 'profile = "opendtu"\ntime_path = "ts"', "mqtt[0].time_path", 'only for profile',
     None),
    ('profile = "opendtu"', 'profile = "victron"', "mqtt[0].portal_id", 'is required for profile = "victron"',
     "VRM"),
    ('login_url = "https://login.salesforce.com"', 'login_url = "http://login.salesforce.com"',
     "datacloud.login_url", "(got 'http://login.salesforce.com')", "https://login.salesforce.com"),
    ('login_url = "https://login.salesforce.com"', 'login_url = "login.salesforce.com"',
     "datacloud.login_url", "(got 'login.salesforce.com')", None),
    ('login_url = "https://login.salesforce.com"', 'login_url = "https://login.salesforce.com/services"',
     "datacloud.login_url", "services", "adds /services/oauth2/token itself"),
    ('source_name = "solar_agent"', "source_name = 7", "datacloud.source_name", "(got 7)", None),
    ('client_id = "3MVG9', 'client_xd = "3MVG9',
     "datacloud.client_xd", "unknown key", "did you mean 'client_id'?"),
    ("flush_interval_seconds = 120.0", 'flush_interval_seconds = "30s"', "drain.flush_interval_seconds",
     "(got '30s')", "write 30"),
    ("batch_max_bytes = 190_000", "batch_max_bytes = 200_000",
     "drain.batch_max_bytes", "(got 200000)", "200_000"),
    ("bulk_file_max_bytes = 150_000_000", "bulk_file_max_bytes = 150_000_001", "drain.bulk_file_max_bytes",
     "(got 150000001)", "150 MB"),
    ("max_requests_per_second = 2.0", "max_requests_per_second = nan", "drain.max_requests_per_second",
     "(got nan)", None),
    ("max_requests_per_second = 2.0", "max_requests_per_second = 300", "drain.max_requests_per_second",
     "(got 300)", None),
    ('listen = ""', 'listen = "127.0.0.1:9108"', "status.token_file", "is required when listen is set",
     "credential:"),
    ('listen = ""', 'listen = "127.0.0.1"', "status.listen", "(got '127.0.0.1')", None),
    ('id = "plant-042"', "", "site.id", "is required", None),
    ('id = "plant-042"', 'id = "plant 042"', "site.id", "(got 'plant 042')", "never change it"),
    ("[drain]", "[[drain]]", "drain", "must be a table ([drain])", None),
    ("[outbox]", "[outbx]", "outbx", "unknown key", "did you mean 'outbox'?"),
]


@pytest.mark.parametrize(("old", "new", "key", "shown", "hint"), CASES,
                         ids=[f"{c[2]}<-{c[1][:30]}" for c in CASES])
def test_broken_copy_names_file_key_value_and_hint(
    write_site: Callable[[str], Path], capsys: pytest.CaptureFixture[str],
    old: str, new: str, key: str, shown: str, hint: str | None,
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert old in text, "the example changed: update this case"
    path = write_site(text.replace(old, new, 1))

    assert main(["check-config", str(path)]) == 2

    err = capsys.readouterr().err
    lines = err.splitlines()
    matching = [i for i, line in enumerate(lines) if line.startswith(f"Error: {path}: {key}: ")]
    assert matching, err
    line = lines[matching[0]]
    assert shown in line
    if hint is not None:
        assert lines[matching[0] + 1].startswith("Try: ") and hint in lines[matching[0] + 1], err
    assert "Traceback" not in err


def test_all_errors_of_a_file_are_reported_together(write_site: Callable[[str], Path]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    wanted = ["outbox.max_bytes", "modbus[0].devices[1].unit_id", "mqtt[0].url",
              "drain.flush_interval_seconds"]
    for key in wanted:
        old, new, *_ = next(c for c in CASES if c[2] == key)
        text = text.replace(old, new, 1)
    path = write_site(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert isinstance(exc.value, ConfigErrors)
    keys = [e.key for e in config_errors(exc.value)]
    assert keys == wanted  # all of them, in file order
    assert str(exc.value).startswith(f"4 errors in {path}:")


def test_single_error_keeps_its_message_and_hint(write_site: Callable[[str], Path]) -> None:
    path = write_site(EXAMPLE.read_text(encoding="utf-8").replace(CASES[0][0], CASES[0][1]))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: outbox.max_bytes: must be a positive integer (got '10GB'); " \
                             "hint: write 10_000_000_000"
    assert (exc.value.key, exc.value.value) == ("outbox.max_bytes", "10GB")


def test_unknown_key_did_you_mean(write_site: Callable[[str], Path]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("poll_interval_seconds = 10.0",
                                                       "poll_intervall_seconds = 10.0")
    with pytest.raises(ConfigError) as exc:
        load_config(write_site(text))
    errors = config_errors(exc.value)
    assert [(e.key, e.hint) for e in errors] == [
        ("modbus[0].poll_intervall_seconds", "did you mean 'poll_interval_seconds'?"),
        ("modbus[1].poll_intervall_seconds", "did you mean 'poll_interval_seconds'?"),
    ]


def test_unknown_key_far_from_any_lists_the_known_ones(write_site: Callable[[str], Path]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("[drain]", "[drain]\nzzz = 1")
    with pytest.raises(ConfigError) as exc:
        load_config(write_site(text))
    assert exc.value.key == "drain.zzz"
    assert exc.value.hint is not None and "batch_max_bytes" in exc.value.hint


def test_toml_syntax_error_names_line_and_column(write_site: Callable[[str], Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    n = lines.index("baudrate = 9600")
    lines[n] = "baudrate = 9600 bits"
    path = write_site("\n".join(lines))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"Error: {path}: line {n + 1}, column 17: TOML syntax error" in err
    assert "baudrate = 9600 bits" in err


def test_duplicate_key_is_explained(write_site: Callable[[str], Path]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("baudrate = 9600", "baudrate = 9600\nbaudrate = 19200")
    with pytest.raises(ConfigError) as exc:
        load_config(write_site(text))
    assert exc.value.key.startswith("line ")
    assert exc.value.hint is not None and "twice" in exc.value.hint


def test_missing_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"Error: {path}: (file): cannot read the config file" in err
    assert "Try: " in err


def test_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'[site]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == "line 2"


def test_missing_schema_file_fails_check_config(write_site: Callable[[str], Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        '# schema_path = "/usr/share/solar-agent/solar_panel_event.yaml"', 'schema_path = "uploaded.yaml"')
    path = write_site(text)
    load_config(path)  # the loader does not open files...
    assert main(["check-config", str(path)]) == 2  # ...check-config does load the schema
    err = capsys.readouterr().err
    assert "uploaded.yaml" in err and "Error: " in err and "Try: " in err


def test_generic_fields_are_checked_against_the_schema(write_site: Callable[[str], Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    feed = ('\n[[mqtt]]\nname = "meter"\nurl = "mqtts://broker.local:8883"\nprofile = "generic"\n'
            'topics = ["tele/+/SENSOR"]\n[mqtt.fields]\nac_power_watts = "ENERGY.Power"\nsite_id = "Site"\n')
    text = EXAMPLE.read_text(encoding="utf-8") + feed
    path = write_site(text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"Error: {path}: mqtt[1].fields.ac_power_watts: is not a field of the ingestion schema" in err
    assert "did you mean 'ac_power_w'?" in err
    assert f"Error: {path}: mqtt[1].fields.site_id: is filled by the agent itself" in err


def test_loopback_http_login_is_allowed_for_the_emulator(write_site: Callable[[str], Path]) -> None:
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080"):
        text = EXAMPLE.read_text(encoding="utf-8").replace('"https://login.salesforce.com"', f'"{url}"', 1)
        assert load_config(write_site(text)).datacloud.login_url == url
