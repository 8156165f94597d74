"""The access and refresh tokens of a login, and when to renew them.

A token's lifetime is read from its own claims (exp - iat, without checking the signature: the gateway
does that) and counted on this machine's monotonic clock from when it arrived, so a client whose clock
differs from the gateway's still renews in time.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenPair", "lifetime_of"]


def lifetime_of(token: str) -> float | None:
    """Seconds from issue to expiry that a JWT declares; None when it declares none or is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims: Any = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp <= iat:
        return None
    return float(exp - iat)


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str | None
    received_at: float  # monotonic clock
    lifetime_s: float | None

    @classmethod
    def from_answer(cls, body: dict[str, Any], now: float) -> TokenPair:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the answer has no access_token")
        refresh = body.get("refresh_token")
        return cls(access=access, refresh=refresh if isinstance(refresh, str) and refresh else None,
                   received_at=now, lifetime_s=lifetime_of(access))

    def due(self, now: float, margin_s: float) -> bool:
        """Renew now? When less than margin_s is left, or half the lifetime for short-lived tokens, so a
        token is never renewed on every call. Unknown lifetimes are renewed only after a 401."""
        if self.lifetime_s is None:
            return False
        left = self.received_at + self.lifetime_s - now
        return left < min(margin_s, self.lifetime_s / 2)
