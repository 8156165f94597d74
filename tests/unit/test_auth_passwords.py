from __future__ import annotations

import base64

import pytest

from aigwd.auth.passwords import DUMMY_HASH, hash_password, is_hash, verify_password


def test_roundtrip() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert is_hash(encoded)
    assert verify_password("correct horse", encoded)


def test_wrong_password() -> None:
    encoded = hash_password("correct horse")
    assert not verify_password("correct horse ", encoded)
    assert not verify_password("", encoded)


def test_distinct_salts() -> None:
    a, b = hash_password("same"), hash_password("same")
    assert a != b
    assert a.split("$")[4] != b.split("$")[4]
    assert verify_password("same", a) and verify_password("same", b)


def test_salt_and_hash_sizes() -> None:
    parts = hash_password("x").split("$")
    assert len(base64.b64decode(parts[4])) == 16
    assert len(base64.b64decode(parts[5])) == 32


def test_unicode_password() -> None:
    encoded = hash_password("pässwörd🔑")
    assert verify_password("pässwörd🔑", encoded)
    assert not verify_password("passwörd🔑", encoded)


def test_dummy_hash_is_valid() -> None:
    assert is_hash(DUMMY_HASH)
    assert not verify_password("", DUMMY_HASH)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plaintext",
        "scrypt$16384$8$1$c2FsdA==",
        "bcrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$abc$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$1000$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # n not a power of two
        "scrypt$1$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # absurd memory
        "scrypt$16384$0$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$16384$8$1$not base64!$" + "A" * 44,
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$",
        "scrypt$16384$8$1$$" + "A" * 44,
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$QUFB",  # digest too short
        "scrypt$-1$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
        "scrypt$\u0661\u0666$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # non-ASCII digits
        "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44 + "$extra",
    ],
)
def test_malformed_hash_is_false_not_error(encoded: str) -> None:
    assert not is_hash(encoded)
    assert verify_password("anything", encoded) is False


def test_truncated_real_hash() -> None:
    encoded = hash_password("pw")
    assert verify_password("pw", encoded[:-3]) is False


def test_unencodable_password_is_false() -> None:
    assert verify_password("\ud800", DUMMY_HASH) is False
