"""Access and refresh tokens: HS256 JWTs, with refresh-token rotation and reuse detection.

Access tokens are checked on every request without any I/O. Refresh tokens are single use: each
trade-in goes through the ledger, and a second trade-in of the same token revokes its family
(every token descended from the same login).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from aigwd.auth.ledger import MemoryRefreshLedger, RefreshLedger
from aigwd.auth.secret import SecretFileError, load_or_create_secret

__all__ = [
    "Claims",
    "MemoryRefreshLedger",
    "RefreshLedger",
    "SecretFileError",
    "TokenError",
    "TokenService",
    "load_or_create_secret",
]

_ALGORITHM = "HS256"
_MIN_SECRET_BYTES = 32
# Clients' and our clocks may disagree a little; a token from slightly ahead is not an attack.
_FUTURE_SKEW_S = 30
# uid: the account id. sub is the user name, for display; a token without uid (issued before accounts had
# ids) is refused, so its holder logs in again and gets one.
_REQUIRED = ("exp", "iat", "sub", "uid", "jti", "typ", "fam", "role")
_ACCESS = "access"
_REFRESH = "refresh"


# Verified access tokens remembered, oldest dropped first.
VERIFIED_CACHE_SIZE = 4096

class TokenError(Exception):
    """A token that must not be honoured; ``detail`` is short and safe to show the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str
    typ: str
    jti: str
    fam: str
    iat: int
    exp: int
    uid: str  # account id: who owns what this token submits


def _number(value: Any) -> float | None:
    # bool is an int subclass in Python; JSON true is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class TokenService:
    def __init__(
        self,
        secret: bytes,
        ledger: RefreshLedger,
        *,
        access_ttl_s: int = 900,
        refresh_ttl_s: int = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"token secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._ledger = ledger
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self._clock = clock
        self._revoked: set[str] = set()
        self._verified: dict[str, Claims] = {}

    async def load(self) -> None:
        """Bring revocations recorded before a restart into memory."""
        self._revoked |= await self._ledger.revoked_families()

    def mark_revoked(self, families: set[str]) -> None:
        """Families another host revoked: refused here from now on."""
        self._revoked |= families

    async def issue_pair(self, sub: str, role: str, uid: str) -> dict[str, str]:
        """Tokens for a fresh login of account `uid` (named `sub`): a new family."""
        if not uid:
            raise ValueError("a token needs the account id")
        return await self._issue_pair(sub, role, uid, uuid.uuid4().hex)

    async def _issue_pair(self, sub: str, role: str, uid: str, fam: str) -> dict[str, str]:
        now = int(self._clock())
        access = self._encode(sub, role, uid, _ACCESS, fam, now, now + self.access_ttl_s)[0]
        refresh_exp = now + self.refresh_ttl_s
        refresh, refresh_jti = self._encode(sub, role, uid, _REFRESH, fam, now, refresh_exp)
        await self._ledger.issued(refresh_jti, fam, sub, float(refresh_exp))
        return {"access_token": access, "refresh_token": refresh, "token_type": "bearer"}

    def _encode(self, sub: str, role: str, uid: str, typ: str, fam: str, iat: int, exp: int) -> tuple[str, str]:
        jti = uuid.uuid4().hex
        payload = {"sub": sub, "uid": uid, "role": role, "typ": typ, "jti": jti, "fam": fam, "iat": iat, "exp": exp}
        return jwt.encode(payload, self._secret, algorithm=_ALGORITHM), jti

    def _decode(self, token: str, want: str) -> Claims:
        try:
            # Only HS256 is accepted: this rules out "none" and algorithm-confusion tricks.
            # Time claims are checked below against our own clock, not pyjwt's.
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={
                    "require": list(_REQUIRED),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise TokenError("Invalid token") from e

        sub, role, typ = _text(payload.get("sub")), _text(payload.get("role")), _text(payload.get("typ"))
        jti, fam, uid = _text(payload.get("jti")), _text(payload.get("fam")), _text(payload.get("uid"))
        iat, exp = _number(payload.get("iat")), _number(payload.get("exp"))
        if sub is None or role is None or typ is None or jti is None or fam is None or uid is None:
            raise TokenError("Invalid token")
        if iat is None or exp is None:
            raise TokenError("Invalid token")

        now = self._clock()
        if exp <= now:
            raise TokenError("Token expired")
        if iat > now + _FUTURE_SKEW_S:
            raise TokenError("Token not yet valid")
        if "nbf" in payload:
            nbf = _number(payload["nbf"])
            if nbf is None:
                raise TokenError("Invalid token")
            if nbf > now + _FUTURE_SKEW_S:
                raise TokenError("Token not yet valid")

        if typ != want:
            if want == _ACCESS and typ == _REFRESH:
                raise TokenError("Access token required")
            if want == _REFRESH and typ == _ACCESS:
                raise TokenError("Refresh token required")
            raise TokenError("Invalid token")
        if fam in self._revoked:
            raise TokenError("Token revoked")
        return Claims(sub=sub, role=role, typ=typ, jti=jti, fam=fam, iat=int(iat), exp=int(exp), uid=uid)

    def verify_access(self, token: str) -> Claims:
        """Claims of a valid, unrevoked access token; TokenError otherwise. No I/O.

        A token verified once is remembered (bounded): its signature cannot change, so later requests
        only need the checks that can, expiry and revocation."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token, _ACCESS)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = claims
            return claims
        if claims.exp <= self._clock():
            self._verified.pop(token, None)
            raise TokenError("Token expired")
        if claims.fam in self._revoked:
            raise TokenError("Token revoked")
        return claims

    async def refresh(self, token: str, role_of: Callable[[str, str], str | None]) -> dict[str, str]:
        """Trade a refresh token for a new pair in the same family.

        ``role_of(name, account id)`` gives the account's current role, or None when it is gone or disabled
        (a new account under the same name is another account).
        """
        claims = self._decode(token, _REFRESH)
        outcome = await self._ledger.consume(claims.jti)
        if outcome == "reused":
            # Both the thief and the rightful holder are logged out; the next login starts anew.
            await self.revoke_family(claims.fam)
            raise TokenError("Refresh token reused; its session has been revoked")
        if outcome != "ok":
            raise TokenError("Invalid token")
        role = role_of(claims.sub, claims.uid)
        if role is None:
            raise TokenError("User no longer active")
        # Same family: a later reuse of the old token also revokes the pair issued here.
        return await self._issue_pair(claims.sub, role, claims.uid, claims.fam)

    async def revoke_family(self, fam: str) -> None:
        # Memory first, so the revocation takes effect here even if recording it fails.
        self._revoked.add(fam)
        await self._ledger.revoke_family(fam)

    async def revoke_subject(self, sub: str) -> int:
        """Revoke every family of one subject (its access and refresh tokens); returns how many."""
        families = await self._ledger.families_of(sub) - self._revoked
        for fam in sorted(families):
            await self.revoke_family(fam)
        return len(families)
