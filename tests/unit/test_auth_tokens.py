from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from aigwd.auth.tokens import (
    MemoryRefreshLedger,
    TokenError,
    TokenService,
)

SECRET = b"0123456789abcdef" * 4  # long enough for HS512 too, so pyjwt does not warn
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger() -> MemoryRefreshLedger:
    return MemoryRefreshLedger()


@pytest.fixture
def svc(clock: FakeClock, ledger: MemoryRefreshLedger) -> TokenService:
    return TokenService(SECRET, ledger, access_ttl_s=900, refresh_ttl_s=3600, clock=clock)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "uid": "id-alice",
        "role": "user",
        "typ": "access",
        "jti": "j1",
        "fam": "f1",
        "iat": int(T0),
        "exp": int(T0) + 900,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _craft(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = SECRET) -> str:
    """A token put together by hand, signed with HMAC-SHA256 under ``key`` or left unsigned."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = "" if key is None else _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{sig}"


def _detail(svc: TokenService, token: str) -> str:
    with pytest.raises(TokenError) as info:
        svc.verify_access(token)
    return info.value.detail


async def test_issue_and_verify_access(svc: TokenService) -> None:
    pair = await svc.issue_pair("alice", "admin", "id-alice")
    assert set(pair) == {"access_token", "refresh_token", "token_type"}
    assert pair["token_type"] == "bearer"
    claims = svc.verify_access(pair["access_token"])
    assert (claims.sub, claims.role, claims.typ) == ("alice", "admin", "access")
    assert claims.iat == int(T0) and claims.exp == int(T0) + 900
    refresh = jwt.decode(pair["refresh_token"], SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert refresh["fam"] == claims.fam and refresh["jti"] != claims.jti
    assert jwt.get_unverified_header(pair["access_token"]) == {"alg": "HS256", "typ": "JWT"}


async def test_each_login_gets_its_own_family(svc: TokenService) -> None:
    a = svc.verify_access((await svc.issue_pair("alice", "user", "id-alice"))["access_token"])
    b = svc.verify_access((await svc.issue_pair("alice", "user", "id-alice"))["access_token"])
    assert a.fam != b.fam


async def test_expired(svc: TokenService, clock: FakeClock) -> None:
    token = (await svc.issue_pair("alice", "user", "id-alice"))["access_token"]
    clock.now = T0 + 899
    svc.verify_access(token)
    clock.now = T0 + 900
    assert _detail(svc, token) == "Token expired"


def test_iat_in_future(svc: TokenService) -> None:
    assert svc.verify_access(jwt.encode(_claims(iat=int(T0) + 30), SECRET, algorithm="HS256"))
    token = jwt.encode(_claims(iat=int(T0) + 31), SECRET, algorithm="HS256")
    assert _detail(svc, token) == "Token not yet valid"


def test_nbf_in_future(svc: TokenService) -> None:
    assert svc.verify_access(jwt.encode(_claims(nbf=int(T0) + 30), SECRET, algorithm="HS256"))
    token = jwt.encode(_claims(nbf=int(T0) + 120), SECRET, algorithm="HS256")
    assert _detail(svc, token) == "Token not yet valid"


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "uid", "jti", "typ", "fam", "role"])
def test_missing_claim(svc: TokenService, missing: str) -> None:
    token = jwt.encode(_claims(**{missing: None}), SECRET, algorithm="HS256")
    assert _detail(svc, token) == "Invalid token"


@pytest.mark.parametrize(
    "over", [{"exp": "soon"}, {"iat": True}, {"sub": 5}, {"uid": ""}, {"fam": ""}, {"nbf": "x"}, {"exp": 10**400}]
)
def test_badly_typed_claims(svc: TokenService, over: dict[str, Any]) -> None:
    token = _craft({"alg": "HS256", "typ": "JWT"}, _claims(**over))
    assert _detail(svc, token) == "Invalid token"


def test_hand_crafted_hs256_accepted(svc: TokenService) -> None:
    # Guards the crafting helper: the refusals below are about the algorithm, not the helper.
    assert svc.verify_access(_craft({"alg": "HS256", "typ": "JWT"}, _claims())).sub == "alice"


def test_alg_none_refused(svc: TokenService) -> None:
    token = _craft({"alg": "none", "typ": "JWT"}, _claims(), key=None)
    assert _detail(svc, token) == "Invalid token"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_refused(svc: TokenService, alg: str) -> None:
    token = jwt.encode(_claims(), SECRET, algorithm=alg)
    assert _detail(svc, token) == "Invalid token"


def test_rs256_algorithm_confusion_refused(svc: TokenService) -> None:
    # Header claims RS256 but the signature is an HMAC under the secret (the classic confusion).
    token = _craft({"alg": "RS256", "typ": "JWT"}, _claims())
    assert _detail(svc, token) == "Invalid token"


def test_wrong_secret(svc: TokenService) -> None:
    token = jwt.encode(_claims(), b"another-secret-that-is-long-enough!!", algorithm="HS256")
    assert _detail(svc, token) == "Invalid token"


async def test_tampered_payload(svc: TokenService) -> None:
    token = (await svc.issue_pair("alice", "user", "id-alice"))["access_token"]
    header, payload, sig = token.split(".")
    i = len(payload) // 2
    flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
    assert _detail(svc, f"{header}.{flipped}.{sig}") == "Invalid token"


def test_escalated_role_without_resigning(svc: TokenService) -> None:
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    header, _, sig = token.split(".")
    forged = _b64(json.dumps(_claims(role="admin")).encode())
    assert _detail(svc, f"{header}.{forged}.{sig}") == "Invalid token"


@pytest.mark.parametrize("junk", ["", "abc", "a.b.c", "....", "Bearer x"])
def test_malformed(svc: TokenService, junk: str) -> None:
    assert _detail(svc, junk) == "Invalid token"


def test_foreign_audience_refused(svc: TokenService) -> None:
    token = jwt.encode(_claims(aud="elsewhere"), SECRET, algorithm="HS256")
    assert _detail(svc, token) == "Invalid token"


async def test_refresh_token_as_access(svc: TokenService) -> None:
    pair = await svc.issue_pair("alice", "user", "id-alice")
    assert _detail(svc, pair["refresh_token"]) == "Access token required"


async def test_access_token_as_refresh(svc: TokenService) -> None:
    pair = await svc.issue_pair("alice", "user", "id-alice")
    with pytest.raises(TokenError, match="Refresh token required"):
        await svc.refresh(pair["access_token"], lambda *_: "user")


async def test_unknown_typ_refused(svc: TokenService) -> None:
    assert _detail(svc, jwt.encode(_claims(typ="id"), SECRET, algorithm="HS256")) == "Invalid token"


async def test_refresh_rotation(svc: TokenService, clock: FakeClock) -> None:
    first = await svc.issue_pair("alice", "user", "id-alice")
    clock.now += 60
    second = await svc.refresh(first["refresh_token"], lambda *_: "admin")
    new_access = svc.verify_access(second["access_token"])
    assert new_access.role == "admin"  # the role is looked up afresh
    assert new_access.fam == svc.verify_access(first["access_token"]).fam
    assert new_access.iat == int(T0) + 60
    third = await svc.refresh(second["refresh_token"], lambda *_: "admin")
    svc.verify_access(third["access_token"])


async def test_reuse_revokes_the_family(svc: TokenService, ledger: MemoryRefreshLedger) -> None:
    first = await svc.issue_pair("alice", "user", "id-alice")
    second = await svc.refresh(first["refresh_token"], lambda *_: "user")
    other_login = await svc.issue_pair("alice", "user", "id-alice")

    with pytest.raises(TokenError) as info:
        await svc.refresh(first["refresh_token"], lambda *_: "user")
    assert info.value.detail == "Refresh token reused; its session has been revoked"

    assert _detail(svc, second["access_token"]) == "Token revoked"
    assert _detail(svc, first["access_token"]) == "Token revoked"
    with pytest.raises(TokenError, match="Token revoked"):
        await svc.refresh(second["refresh_token"], lambda *_: "user")
    # Another login of the same user is a different family and keeps working.
    svc.verify_access(other_login["access_token"])
    fam = svc.verify_access(other_login["access_token"]).fam
    assert fam not in await ledger.revoked_families()
    assert len(await ledger.revoked_families()) == 1


async def test_refresh_for_inactive_user(svc: TokenService) -> None:
    pair = await svc.issue_pair("alice", "user", "id-alice")
    with pytest.raises(TokenError, match="User no longer active"):
        await svc.refresh(pair["refresh_token"], lambda *_: None)


async def test_refresh_unknown_to_ledger(svc: TokenService) -> None:
    token = jwt.encode(_claims(typ="refresh", jti="never-issued"), SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match=r"^Invalid token$"):
        await svc.refresh(token, lambda *_: "user")


async def test_refresh_expired(svc: TokenService, clock: FakeClock) -> None:
    pair = await svc.issue_pair("alice", "user", "id-alice")
    clock.now = T0 + 3600
    with pytest.raises(TokenError, match="Token expired"):
        await svc.refresh(pair["refresh_token"], lambda *_: "user")


async def test_load_restores_revocations(clock: FakeClock, ledger: MemoryRefreshLedger) -> None:
    before = TokenService(SECRET, ledger, clock=clock)
    pair = await before.issue_pair("alice", "user", "id-alice")
    await before.revoke_family(before.verify_access(pair["access_token"]).fam)

    after = TokenService(SECRET, ledger, clock=clock)  # a restart
    after.verify_access(pair["access_token"])  # not loaded yet
    await after.load()
    assert _detail(after, pair["access_token"]) == "Token revoked"


def test_short_secret_refused(ledger: MemoryRefreshLedger) -> None:
    with pytest.raises(ValueError):
        TokenService(b"short", ledger)


async def test_a_remembered_token_is_still_revocable(svc: TokenService) -> None:
    pair = await svc.issue_pair("alice", "user", "id-alice")
    claims = svc.verify_access(pair["access_token"])  # verified once, now remembered
    assert svc.verify_access(pair["access_token"]) == claims
    await svc.revoke_family(claims.fam)
    assert _detail(svc, pair["access_token"]) == "Token revoked"
