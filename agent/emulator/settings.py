"""Emulator settings (fixed at start) and faults (switchable at run time).

Where the public Data Cloud docs are uncertain (datacloud-api.md §9) the default is the
stricter behaviour and a switch here turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

# What Salesforce accepts as a JWT bearer assertion's aud: the login servers, or an Experience Cloud
# site URL (Salesforce Help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server Integration",
# https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm). Never the
# host the token request was posted to when that is a My Domain, and so never the emulator's own URL.
DEFAULT_LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
# Every endpoint the emulator serves outside its admin API (route names).
ENDPOINTS: Final = frozenset({
    "oauth_token", "a360_token", "stream_insert", "stream_test", "stream_delete",
    "job_create", "job_list", "job_get", "job_patch", "job_delete", "job_upload",
})
# Odd answers an endpoint can be told to give (Faults.answers), for the clients' hostile-answer tests.
# Answered before the request reaches "Data Cloud" (something in between answers; nothing happens):
#   html      200 text/html (a captive portal's page)      html_400  400 text/html (a proxy's refusal)
#   empty     200 with an empty body                       redirect  302 to a login page
#   throttle  429 with Faults.retry_after_header verbatim  hang      no answer at all, ever
# Answered after the request was handled (it took effect; the answer is broken on the way back):
#   truncated the JSON answer cut in half                  huge      a JSON answer of huge_answer_bytes
#   list      the JSON answer wrapped in a list            wrong_types  every top-level value of the wrong type
#   nulls     every top-level value null                   missing   {} (every field missing)
ANSWERS_BEFORE: Final = frozenset({"html", "html_400", "empty", "redirect", "throttle", "hang"})
ANSWERS_AFTER: Final = frozenset({"truncated", "huge", "list", "wrong_types", "nulls", "missing"})


@dataclass(frozen=True)
class EmulatorSettings:
    """How the emulated org, connector and service limits look.

    Limits default to the documented Data Cloud values (datacloud-api.md §4).
    ``max_body_bytes`` is 200,000 (decimal KB, the smaller reading of "less than 200 KB");
    a larger body is answered 413 (the docs state only the limit; 413 is the stricter,
    unambiguous signal).
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    public_key_pem: bytes = b""  # PEM public key or X.509 certificate verifying the RS256 JWT assertion
    client_id: str = "solar-agent"
    username: str = "agent@solar.example"
    audiences: tuple[str, ...] = ()  # accepted JWT aud values; empty = DEFAULT_LOGIN_AUDIENCES
    source_name: str = "solar_agent"
    object_name: str = "solar_panel_event"
    # The connector's object endpoints: (endpoint name, schema object). The streaming URL and a bulk
    # job's "object" name the endpoint; objects not listed are reachable under their own name. The
    # docs show endpoint names that are not plain schema names ([INS] posts to
    # .../sources/ntotest/exercises_734a9fa2) and say to use the downloaded endpoints ([SI]).
    object_endpoints: tuple[tuple[str, str], ...] = ()
    primary_key: str = "event_id"
    schema_path: Path | None = None  # None = agent/data/solar_panel_event.yaml
    db_path: Path | None = None  # None = a temp file removed at exit
    processing_delay_seconds: float = 0.0
    bulk_processing_seconds: float = 0.0
    token_lifetime_seconds: int = 7200
    rate_limit_rps: float = 250.0
    max_body_bytes: int = 200_000
    max_file_bytes: int = 150_000_000
    max_files_per_job: int = 100
    max_concurrent_jobs: int = 5
    max_jobs_per_hour: int = 20
    max_delete_ids: int = 200
    validate_streaming: bool = True  # False: normal streaming lands records unchecked (benchmarks only)
    # How the normal streaming insert treats records that do not match the schema. Data Cloud
    # documents streaming as fire-and-forget ("processed asynchronously approximately every 3
    # minutes", [SI]) with per-record feedback only from /actions/test ([VAL]); whether the insert
    # itself ever answers 400 for a mismatch is not documented. False: a synchronous 400 with a
    # validationReport (the stricter answer). True: 202 for every well-formed envelope, and the
    # invalid records are dropped when processed (read them at GET /__emulator/dropped).
    fire_and_forget: bool = False
    reject_unknown_fields: bool = True  # unknown field in a streamed record -> invalid (undocumented, §9)
    # Bulk CSV columns that are not fields of the object. [BI] "Prepare CSV Files": "Results only
    # include columns that are a match", so by default they are ignored; True refuses the file.
    reject_unknown_csv_columns: bool = False
    require_all_fields: bool = False  # docs: "should be present"; missing fields are null by default
    tls_dir: Path | None = None
    dc_instance_url_style: Literal["bare", "scheme"] = "bare"
    tenant_id: str = "a360/prod/emulator0000000000000000"


@dataclass
class Faults:
    """Failure injection. Rates are probabilities in [0, 1] applied per ingest request."""

    status_rates: dict[int, float] = field(default_factory=dict)  # e.g. {500: 0.1, 429: 0.05}
    retry_after_seconds: float | None = None  # sent with injected 429s when set
    latency_seconds: float = 0.0  # added before every non-admin request is handled
    reset_rate: float = 0.0  # close the connection without an answer (nothing lands)
    lose_response_rate: float = 0.0  # accept (records land) then drop the connection
    outage: bool = False  # every non-admin request gets its connection reset, until cleared
    expire_tokens: bool = False  # one shot: every token issued so far is expired (-> 401)
    fail_next_jobs: int = 0  # the next N closed bulk jobs end Failed, nothing lands
    html_on_reused_core_token: bool = False  # 2nd a360 exchange of one core token -> 200 HTML (Help 005104785)
    answers: dict[str, str] = field(default_factory=dict)  # endpoint -> odd answer kind (see ANSWERS_*)
    retry_after_header: str | None = None  # sent verbatim as Retry-After with every 429 when set
    huge_answer_bytes: int = 64 << 20  # size of a "huge" answer
    seed: int | None = None

    def __post_init__(self) -> None:
        for status, rate in self.status_rates.items():
            if not 400 <= int(status) <= 599:
                raise ValueError(f"status_rates: {status} is not an HTTP error status")
            _check_rate(f"status_rates[{status}]", rate)
        if sum(self.status_rates.values()) > 1.0:
            raise ValueError("status_rates: the rates add up to more than 1")
        _check_rate("reset_rate", self.reset_rate)
        _check_rate("lose_response_rate", self.lose_response_rate)
        if self.latency_seconds < 0 or self.fail_next_jobs < 0 or self.huge_answer_bytes < 0:
            raise ValueError("latency_seconds, fail_next_jobs and huge_answer_bytes must not be negative")
        for endpoint, kind in self.answers.items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"answers: unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
            if kind not in ANSWERS_BEFORE | ANSWERS_AFTER:
                raise ValueError(f"answers[{endpoint}]: unknown kind {kind!r}; "
                                 f"known: {sorted(ANSWERS_BEFORE | ANSWERS_AFTER)}")
        if self.retry_after_header is not None and any(c in self.retry_after_header for c in "\r\n"):
            raise ValueError("retry_after_header must be one line")

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Build from the admin API's JSON object; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}; known: {sorted(known)}")
        kwargs = dict(data)
        if "status_rates" in kwargs:
            kwargs["status_rates"] = {int(k): float(v) for k, v in kwargs["status_rates"].items()}
        if "answers" in kwargs:
            kwargs["answers"] = {str(k): str(v) for k, v in kwargs["answers"].items()}
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["status_rates"] = {str(k): v for k, v in self.status_rates.items()}
        out["answers"] = dict(self.answers)
        return out


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name}: {rate} is not a probability in [0, 1]")
