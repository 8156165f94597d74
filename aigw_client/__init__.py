"""A Python client for the aigw gateway's /api routes: chat, OCR (images and PDFs), waiting on results,
cancelling; login with token renewal or an API key; retries on 429 and 503; typed errors.

    from aigw_client import Client
    with Client("http://127.0.0.1:8080", username="admin", password="admin", client_id="my_app") as gw:
        print(gw.chat("What is 2+2?").content)
        print(gw.ocr("document.png", resolution="large").content)

AsyncClient offers the same with `await`. This package imports nothing from the gateway itself.
"""

from .async_client import AsyncClient, RetryEvent
from .errors import (
    AigwError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    ServerError,
    UnavailableError,
    WaitTimeoutError,
)
from .records import RequestRecord, Submitted
from .retry import RetryPolicy
from .sync_client import Client

__all__ = [
    "AigwError", "AsyncClient", "AuthenticationError", "BadRequestError", "Client", "ConflictError",
    "ConnectionFailedError", "NotFoundError", "PermissionDeniedError", "RateLimitError", "RequestFailedError",
    "RequestRecord", "RetryEvent", "RetryPolicy", "ServerError", "Submitted", "UnavailableError",
    "WaitTimeoutError",
]
