"""The token signing secret on disk: created once, kept private to the daemon's user."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

_MIN_BYTES = 32
_NEW_SECRET_BYTES = 48


class SecretFileError(Exception):
    """The secret file exists but cannot be trusted or used."""


def _create(path: Path) -> None:
    """Write a fresh secret unless the file exists (O_EXCL: never clobber one, even in a race)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise SecretFileError(f"cannot create secret file {path}: {e.strerror}") from e
    try:
        # Hex text rather than raw bytes so an operator can read and copy it.
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(_NEW_SECRET_BYTES) + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_or_create_secret(path: Path) -> bytes:
    """Return the secret at ``path``, creating it (mode 0600, parent 0700) when missing.

    Raises SecretFileError for a file others can access or one too short to sign with.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _create(path)
    try:
        with open(path, "rb") as f:
            # fstat on the open file, so the file checked is the one read.
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SecretFileError(f"secret file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise SecretFileError(
                    f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                    f"anyone who reads it can forge tokens, run: chmod 600 {path}"
                )
            data = f.read().strip()
    except OSError as e:
        raise SecretFileError(f"cannot read secret file {path}: {e.strerror}") from e
    if len(data) < _MIN_BYTES:
        raise SecretFileError(
            f"secret file {path} holds {len(data)} bytes; at least {_MIN_BYTES} are needed "
            f"(delete it to have a new one generated)"
        )
    return data
