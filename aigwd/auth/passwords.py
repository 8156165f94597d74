"""Password hashing with scrypt from the standard library.

Encoded form: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. Both functions block for tens of
milliseconds on purpose, so async callers run them in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_SCHEME = "scrypt"
_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_DKLEN = 32

# Bounds for parameters read back from an encoded hash: a hostile or corrupt config line must
# not be able to make one login attempt allocate gigabytes or spin for minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 256 * 1024 * 1024
_MIN_DKLEN = 16
_MAX_DKLEN = 64


def _maxmem(n: int, r: int, p: int) -> int:
    # scrypt needs about 128*r*(n + p) bytes; the slack covers OpenSSL's own bookkeeping.
    return 128 * r * (n + p + 2) + 1024 * 1024


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=_maxmem(n, r, p)
    )


def hash_password(password: str) -> str:
    """Hash a password with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _derive(password, salt, _N, _R, _P, _DKLEN)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64encode(salt)}${_b64encode(digest)}"


def _is_small_int(s: str) -> bool:
    return 0 < len(s) <= 8 and s.isascii() and s.isdigit()


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """Split an encoded hash into (n, r, p, salt, digest), or None when it is not one we accept."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    n_s, r_s, p_s, salt_s, digest_s = parts[1:]
    if not all(_is_small_int(x) for x in (n_s, r_s, p_s)):
        return None
    n, r, p = int(n_s), int(r_s), int(p_s)
    # n must be a power of two greater than one; scrypt refuses anything else.
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        return None
    if _maxmem(n, r, p) > _MAX_MEM:
        return None
    try:
        salt = base64.b64decode(salt_s, validate=True)
        digest = base64.b64decode(digest_s, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or not _MIN_DKLEN <= len(digest) <= _MAX_DKLEN:
        return None
    return n, r, p, salt, digest


def is_hash(s: str) -> bool:
    """True when ``s`` looks like an encoded hash this module can verify."""
    return _parse(s) is not None


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against an encoded hash; False for a mismatch or a malformed hash."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    try:
        candidate = _derive(password, salt, n, r, p, len(digest))
    except (ValueError, MemoryError):  # includes passwords that are not encodable
        return False
    return hmac.compare_digest(candidate, digest)


# Verified against when the user is unknown or disabled, so that answer costs the same time as a
# wrong password for a real user. Its plaintext was random and thrown away; it is a constant so that
# importing this module does not cost a hash (about 50-100 ms of every start).
DUMMY_HASH = "scrypt$16384$8$1$LR4gJEBaSopFqUBUraHKqA==$+ITyHs48wAyAARbq0Q2i/yxnH05B1cR8QXcuw+5OUzk="
