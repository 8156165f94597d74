from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from aigwd.auth.tokens import SecretFileError, load_or_create_secret


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jwt.secret"
    secret = load_or_create_secret(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert len(secret) == 96
    bytes.fromhex(secret.decode())  # readable hex text
    assert load_or_create_secret(path) == secret


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_secret_refused_when_others_have_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text("x" * 64)
    os.chmod(path, mode)
    with pytest.raises(SecretFileError, match=re.escape(str(path))):
        load_or_create_secret(path)


def test_secret_refused_when_short(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text("tooshort\n")
    os.chmod(path, 0o600)
    with pytest.raises(SecretFileError, match=re.escape(str(path))):
        load_or_create_secret(path)


def test_secret_whitespace_stripped(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.write_text("  " + "k" * 40 + "\n\n")
    os.chmod(path, 0o600)
    assert load_or_create_secret(path) == b"k" * 40


def test_secret_path_is_directory(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    path.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match=re.escape(str(path))):
        load_or_create_secret(path)
