"""The one exception tree of solar-agent.

Foreign exceptions (sqlite3, aiohttp, pymodbus, paho, jwt) are translated into these at the
boundary of the module that talks to them (``raise X from exc``), so callers catch ours only::

    AgentError                      base; carries an optional technician ``hint``
    ├── ConfigError                 bad site config: file, key path, value, hint (fail fast at start)
    ├── SchemaError                 the OpenAPI schema file breaks the Data Cloud rules
    ├── RecordError                 a reading cannot become a valid record (counted, never sent)
    ├── OutboxError                 the local store
    │   ├── OutboxFatalError        disk full / I/O error while committing: exit non-zero, let systemd restart
    │   └── OutboxFullError         byte cap or free-space floor hit under the reject_new policy (nothing stored)
    ├── SourceError                 a device or broker misbehaved (counted per device, never stops the others)
    │   ├── DeviceTimeout
    │   ├── DeviceProtocolError     CRC error, Modbus exception, not SunSpec, malformed payload
    │   └── PayloadError            an MQTT payload a profile cannot decode
    └── DataCloudError              the Ingestion API side
        ├── AuthError               token or exchange refused; ``error_description`` from the server
        ├── RejectedError           400: the records themselves are bad (not retryable)
        ├── ThrottledError          429: slow down; ``retry_after`` seconds when the server said so
        ├── RetryableError          5xx, timeouts, connection resets: try again with backoff
        └── JobError                bulk job failed or cannot move to the wanted state
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error solar-agent raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; hint: {self.hint}"
        return self.message


class ConfigError(AgentError):
    """A site config value is invalid. Names the file, the key path and the value."""

    def __init__(self, file: str, key: str, message: str, *, value: object = None, hint: str | None = None):
        shown = f" (got {value!r})" if value is not None else ""
        super().__init__(f"{file}: {key}: {message}{shown}", hint=hint)
        self.file = file
        self.key = key
        self.value = value


class SchemaError(AgentError):
    """The ingestion schema file is not a valid Data Cloud Ingestion API schema."""


class RecordError(AgentError):
    """A reading cannot be turned into a record that matches the schema."""


class OutboxError(AgentError):
    """The outbox could not do what was asked (not a disk failure)."""


class OutboxFatalError(OutboxError):
    """The outbox cannot commit (disk full, I/O error). The process must exit non-zero."""


class SourceError(AgentError):
    """A device or broker failed; counted per device."""


class DeviceTimeout(SourceError):
    """The device did not answer in time."""


class DeviceProtocolError(SourceError):
    """The device answered with something unusable (CRC, Modbus exception, not SunSpec)."""


class DeviceRefused(DeviceProtocolError):
    """The device answered with a Modbus exception: it heard the request and refused it (unlike a
    garbled answer, which may be anyone's noise)."""


class PayloadError(SourceError):
    """An MQTT payload could not be decoded by its profile."""


class DataCloudError(AgentError):
    """The Data Cloud side failed."""

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class AuthError(DataCloudError):
    """Authentication or token exchange failed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_description: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, status=status, hint=hint)
        self.error_description = error_description


class RejectedError(DataCloudError):
    """The server refused the records themselves (400). ``report`` is its validationReport, if any."""

    def __init__(self, message: str, *, status: int = 400, report: list[dict[str, object]] | None = None):
        super().__init__(message, status=status)
        self.report = report or []


class ThrottledError(DataCloudError):
    """429: too many requests. ``retry_after`` is the server's Retry-After in seconds, if sent."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class RetryableError(DataCloudError):
    """A transient failure (5xx, timeout, reset). Retry with capped exponential backoff."""


class JobError(DataCloudError):
    """A bulk job failed or refused a state change."""


class OutboxFullError(OutboxError):
    """The outbox is at its byte cap or free-space floor and the policy refuses new records."""
