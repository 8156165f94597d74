from __future__ import annotations

from unittest import mock

import pytest

from aigwd.auth import users as users_mod
from aigwd.auth.passwords import DUMMY_HASH, hash_password, verify_password
from aigwd.auth.users import User, UserDirectory, hash_in_thread

ALICE_PW = "alice-secret"
BOB_PW = "bob-secret"


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"alice": hash_password(ALICE_PW), "bob": hash_password(BOB_PW)}


@pytest.fixture
def directory(hashes: dict[str, str]) -> UserDirectory:
    return UserDirectory(
        [
            User("alice", "admin", hashes["alice"]),
            User("bob", "user", hashes["bob"], disabled=True),
        ]
    )


async def test_authenticate_ok(directory: UserDirectory) -> None:
    user = await directory.authenticate("alice", ALICE_PW)
    assert user is not None
    assert user.name == "alice" and user.role == "admin"


async def test_authenticate_wrong_password(directory: UserDirectory) -> None:
    assert await directory.authenticate("alice", "nope") is None


async def test_authenticate_unknown_user_runs_dummy_verify(directory: UserDirectory) -> None:
    with mock.patch.object(users_mod, "verify_password", wraps=verify_password) as spy:
        assert await directory.authenticate("mallory", ALICE_PW) is None
    spy.assert_called_once_with(ALICE_PW, DUMMY_HASH)


async def test_authenticate_disabled_user(directory: UserDirectory) -> None:
    with mock.patch.object(users_mod, "verify_password", wraps=verify_password) as spy:
        assert await directory.authenticate("bob", BOB_PW) is None
    spy.assert_called_once_with(BOB_PW, DUMMY_HASH)


async def test_authenticate_refused_when_reloaded_meanwhile(
    directory: UserDirectory, hashes: dict[str, str]
) -> None:
    def verify_then_reload(password: str, encoded: str) -> bool:
        directory.replace([User("alice", "admin", hashes["alice"], disabled=True)])
        return verify_password(password, encoded)

    with mock.patch.object(users_mod, "verify_password", verify_then_reload):
        assert await directory.authenticate("alice", ALICE_PW) is None


def test_get_and_active(directory: UserDirectory) -> None:
    alice, bob = directory.get("alice"), directory.get("bob")
    assert alice is not None and bob is not None
    assert directory.active("alice") is alice
    assert directory.active("bob") is None
    assert directory.get("nobody") is None
    assert directory.active("nobody") is None


def test_replace_and_names(directory: UserDirectory, hashes: dict[str, str]) -> None:
    assert directory.names() == ["alice", "bob"]
    directory.replace([User("carol", "user", hashes["bob"])])
    assert directory.names() == ["carol"]
    assert directory.active("alice") is None


def test_replace_rejects_duplicates(directory: UserDirectory, hashes: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        directory.replace([User("x", "user", hashes["bob"]), User("x", "admin", hashes["bob"])])
    assert directory.names() == ["alice", "bob"]


def test_unknown_role_rejected() -> None:
    with pytest.raises(ValueError, match="role"):
        User("x", "root", DUMMY_HASH)


async def test_hash_in_thread() -> None:
    encoded = await hash_in_thread("pw")
    assert verify_password("pw", encoded)
