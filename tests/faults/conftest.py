"""The real daemon with stand-in model servers, as in the integration tests."""

from tests.integration.conftest import make_daemon, session

__all__ = ["make_daemon", "session"]
