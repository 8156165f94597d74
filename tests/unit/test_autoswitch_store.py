"""What the auto-switch learns from: OCR demand recorded in the state database, and its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aigwd import config
from aigwd.config import ConfigError
from aigwd.store import SqliteStore, Store, db

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(new_store: Callable[..., Store]) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


async def test_record_read_and_purge_ocr_demand(store: Store) -> None:
    for ts, mode in [(300.0, "tiny"), (100.0, "gundam"), (200.0, "base"), (400.0, "gundam")]:
        await store.add_ocr_demand(ts, mode)
    assert await store.ocr_demand(0.0) == [(100.0, "gundam"), (200.0, "base"), (300.0, "tiny"), (400.0, "gundam")]
    assert await store.ocr_demand(200.0) == [(200.0, "base"), (300.0, "tiny"), (400.0, "gundam")]
    assert await store.purge_ocr_demand(300.0) == 2
    assert await store.ocr_demand(0.0) == [(300.0, "tiny"), (400.0, "gundam")]


async def test_ocr_demand_survives_a_reopen(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "state") as s:
        await s.add_ocr_demand(1.5, "large")
    async with SqliteStore(tmp_path / "state") as s:
        assert await s.ocr_demand(0.0) == [(1.5, "large")]
        rows = s.db_path
    conn = db.connect(rows)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'ocr_demand' "
                                              "AND type = 'index'")}
    finally:
        conn.close()
    assert "ocr_demand_timestamp" in indexes


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "aigw.toml"
    path.write_text(text)
    return config.load(path)


def test_auto_switch_settings(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    a = cfg.auto_switch
    assert (a.enabled, a.pattern_window_days, a.min_requests_for_switch, a.margin, a.lead_s, a.slot_minutes,
            a.dry_run, a.check_interval_s) == (False, 7, 10, 1.5, 120.0, 60, False, 30.0)
    cfg = _load(tmp_path, "[auto_switch]\nenabled = true\nmargin = 2\nslot_minutes = 30\ndry_run = true\n")
    assert cfg.auto_switch.enabled and cfg.auto_switch.margin == 2.0 and cfg.auto_switch.slot_minutes == 30
    assert "min_requests_for_switch" in config.describe()


@pytest.mark.parametrize("text, key, problem", [
    ("[auto_switch]\nslot_minutes = 7\n", "auto_switch.slot_minutes", "divide a day"),
    ("[auto_switch]\nmargin = 0.5\n", "auto_switch.margin", "1 or more"),
    ("[auto_switch]\nmin_requests_for_switch = 0\n", "auto_switch.min_requests_for_switch", "greater than 0"),
    ("[auto_switch]\nlead_s = -1\n", "auto_switch.lead_s", "0 or more"),
    ("[auto_switch]\nenabled = 'yes'\n", "auto_switch.enabled", "bool"),
])
def test_auto_switch_settings_are_checked(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert key in str(err.value) and problem in str(err.value)


def test_shipped_config_documents_auto_switch() -> None:
    text = (REPO / "etc/aigw/aigw.toml").read_text()
    assert "[auto_switch]" in text
    cfg = config.load(REPO / "etc/aigw/aigw.toml")
    assert cfg.auto_switch.enabled is False and cfg.auto_switch.lead_s == 120
