"""solar-agent: solar-plant telemetry into Salesforce Data Cloud, without losing a reading."""

__version__ = "0.1.0"
