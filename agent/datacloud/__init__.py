"""The Data Cloud side: token provider, streaming client and bulk job client.

Everything raises ``agent.errors`` only; aiohttp's exceptions are translated in ``_http``.
"""

from agent.datacloud.auth import Token, TokenProvider, auth_hint, make_ssl_context, normalise_url
from agent.datacloud.bulk import (
    BulkClient,
    BulkResult,
    BulkUploader,
    JobBudget,
    JobJournal,
)
from agent.datacloud.streaming import Backoff, DeliveryResult, Pacer, StreamingClient, split

__all__ = [
    "Backoff",
    "BulkClient",
    "BulkResult",
    "BulkUploader",
    "DeliveryResult",
    "JobBudget",
    "JobJournal",
    "Pacer",
    "StreamingClient",
    "Token",
    "TokenProvider",
    "auth_hint",
    "make_ssl_context",
    "normalise_url",
    "split",
]
