"""Login names that try to forge log records or drive the admin's terminal, against the real daemon."""

from __future__ import annotations

import re

from tests.integration.conftest import async_wait_until
from tests.integration.control_helpers import aigwctl, start

FORGED = "level=info event=login user=admin role=admin"  # within the 64 characters a name may have
# CR, LF, ESC (clear screen, set title), U+2028, U+0085 (NEL), a bidirectional override.
NAMES = ["x\n" + FORGED, "x\r" + FORGED, "x\x1b[2J\x1b]0;owned\x07", "x\u2028" + FORGED, "x\x85" + FORGED,
         "x\u202e" + FORGED]
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


async def test_forged_login_records_stay_inside_one_line(make_daemon, session) -> None:
    d = start(make_daemon)
    for name in NAMES:
        async with session.post(d.url + "/auth/token", data={"username": name, "password": "wrong"}) as resp:
            assert resp.status == 401
    async with session.post(d.url + "/auth/token", data={"username": "admin", "password": "admin"}) as resp:
        assert resp.status == 200

    def logged() -> bool:
        return d.output().count("event=login_failed") == len(NAMES) and "event=login user=admin" in d.output()

    await async_wait_until(logged, what="every login attempt to be logged")
    out = d.output()
    assert not RAW.search(out), [m.group() for m in RAW.finditer(out)]
    # splitlines breaks on every Unicode line boundary: each piece must be a whole record.
    lines = out.splitlines()
    assert all(line.startswith("ts=") for line in lines if "event=" in line), lines
    real = [line for line in lines if re.search(r" event=login user=admin role=admin$", line)]
    assert len(real) == 1, real  # the genuine one; the forged ones are inside quoted user="..." values

    # aigwctl shows the same records with every control escaped, one record a line.
    shown = aigwctl(d, "logs", "--lines", "1000")
    assert shown.returncode == 0, shown.stderr
    assert not RAW.search(shown.stdout), repr(shown.stdout)
    failed = [line for line in shown.stdout.split("\n") if "event=login_failed" in line]
    assert len(failed) == len(NAMES)
    assert any("\\x1b[2J" in line for line in failed), failed
    # An error detail from the daemon is escaped too.
    bad = aigwctl(d, "users", "del", "nobody\x1b[2J")
    assert bad.returncode != 0 and not RAW.search(bad.stderr) and "\\e[2J" in bad.stderr, repr(bad.stderr)
