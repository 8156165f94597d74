"""The OCR mode-switch policy on a fake clock: dwell, demand weighed per subject, the hour's bound, shares."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from aigwd.backends.supervisor import Supervisor
from aigwd.config import OcrConfig, load
from aigwd.errors import ApiError
from aigwd.gateway import Gateway
from aigwd.scheduling.ocrmodes import HOUR_S, Decision, SwitchLedger, decide, weigh
from aigwd.store import SqliteStore

from .fakeos import FakeLayer

MODES = ("tiny", "small", "base", "large", "gundam")
OCR = OcrConfig()


def ask(ledger: SwitchLedger, now: float, current: str, by_subject: dict[str, dict[str, tuple[int, float]]],
        since: float = 1e9, processing: int = 0) -> Decision:
    return decide(ledger, now, current, by_subject, processing, since, min_dwell_s=OCR.min_dwell_s,
                  max_mismatch_wait_s=OCR.max_mismatch_wait_s, min_demand=OCR.switch_min_demand,
                  per_subject=OCR.switch_demand_per_subject)


def ledger() -> SwitchLedger:
    return SwitchLedger(OCR.max_switches_per_hour, OCR.switch_share_per_subject)


def test_one_subjects_flood_weighs_as_one_request() -> None:
    demand, who = weigh({"tiny": {"bob": (50, 3.0)}, "large": {"alice": (2, 1.0), "carol": (1, 0.5)}}, 1)
    assert demand == {"tiny": (1, 3.0), "large": (2, 1.0)} and who["large"] == ["alice", "carol"]
    assert weigh({"tiny": {"bob": (50, 3.0)}}, 0)[0]["tiny"] == (50, 3.0)  # 0: no cap


def test_one_request_is_not_worth_a_switch_but_two_subjects_are() -> None:
    d = ask(ledger(), 0.0, "large", {"tiny": {"bob": (40, 5.0)}})
    assert d.target is None and "switch_min_demand" in d.reason
    d = ask(ledger(), 0.0, "large", {"tiny": {"bob": (1, 5.0), "alice": (1, 2.0)}})
    assert d.target == "tiny" and d.subjects == ("alice", "bob")


def test_a_lone_request_that_waited_long_enough_is_still_served() -> None:
    d = ask(ledger(), 0.0, "large", {"tiny": {"bob": (1, OCR.max_mismatch_wait_s)}})
    assert d.target == "tiny" and "waited" in d.reason and d.subjects == ("bob",)


def test_the_dwell_holds_when_the_running_mode_is_idle() -> None:
    both = {"tiny": {"bob": (1, 500.0), "alice": (1, 500.0)}}
    d = ask(ledger(), 0.0, "large", both, since=OCR.min_dwell_s - 1)
    assert d.target is None and "dwell" in d.reason
    assert ask(ledger(), 0.0, "large", both, since=OCR.min_dwell_s).target == "tiny"


def test_switches_per_hour_are_bounded_over_a_sliding_window() -> None:
    led = SwitchLedger(3, 1.0)
    for t in (0.0, 100.0, 200.0):
        led.record(t)  # admin switches: counted, charged to no one
    both = {"tiny": {"bob": (1, 500.0), "alice": (1, 500.0)}}
    d = ask(led, 300.0, "large", both)
    assert d.target is None and "max_switches_per_hour" in d.reason and "3300 s" in d.reason
    assert led.status(300.0)["switches_last_hour"] == 3
    assert ask(led, HOUR_S + 0.5, "large", both).target == "tiny"  # the first one has left the window


def test_a_subject_is_charged_its_share_and_then_left_out() -> None:
    led = ledger()  # 6 an hour, half for one subject
    cap = OCR.max_switches_per_hour * OCR.switch_share_per_subject
    for i in range(int(cap)):
        d = ask(led, i * 200.0, "large", {"tiny": {"bob": (1, 500.0)}})
        assert d.target == "tiny" and d.subjects == ("bob",)
        led.record(i * 200.0, d.subjects)
    d = ask(led, 1000.0, "large", {"tiny": {"bob": (9, 900.0)}})
    assert d.target is None and "left out" in d.reason and "bob" in d.reason
    # Another subject's demand still counts, and its own requests are not left out for staying.
    assert ask(led, 1000.0, "large", {"tiny": {"alice": (1, 500.0)}}).target == "tiny"
    assert ask(led, 1000.0, "large", {"large": {"bob": (3, 1.0)}, "tiny": {"alice": (1, 50.0)}}).target is None


def test_a_switch_for_several_subjects_is_charged_in_parts() -> None:
    led = SwitchLedger(10, 0.5)  # 5 for one subject
    for t in range(6):
        led.record(float(t), ("alice", "bob"))  # 3 each
    assert led.left_out(10.0) == frozenset()
    led.record(20.0, ("bob",))
    led.record(21.0, ("bob",))
    assert led.left_out(22.0) == frozenset({"bob"})
    assert led.left_out(HOUR_S + 5.5) == frozenset()  # charges age out with the window


def rotate(seconds: int, subjects: tuple[str, ...]) -> int:
    """Each second one request for the next mode from each subject, on a server that serves its own mode at
    once; the policy checked every second. The number of switches made."""
    led, mode, last_switch, switches = ledger(), "large", -1e9, 0
    waiting: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for now in range(seconds):
        for k, subject in enumerate(subjects):
            waiting[MODES[(now + k) % len(MODES)]][subject].append(float(now))
        waiting.pop(mode, None)  # the running mode's requests are served
        by_subject = {m: {s: (len(ts), now - ts[0]) for s, ts in per.items() if ts} for m, per in waiting.items()}
        d = ask(led, float(now), mode, by_subject, since=now - last_switch)
        if d.target is not None:
            led.record(float(now), d.subjects)
            mode, last_switch, switches = d.target, now, switches + 1
    return switches


def test_one_subject_rotating_modes_causes_at_most_its_share_of_switches_an_hour() -> None:
    assert rotate(3600, ("bob",)) <= OCR.max_switches_per_hour * OCR.switch_share_per_subject
    # Many subjects together are still bounded by the hour's limit.
    assert rotate(3600, ("bob", "carol", "dave", "erin")) <= OCR.max_switches_per_hour


async def test_past_the_bound_the_auto_switch_is_refused_and_an_admin_switch_is_made_and_counted(
        tmp_path: Path) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n[ocr]\nmax_switches_per_hour = 2\n'
                      '[backends.deepseek]\nkind = "ocr"\nmodels = ["ocr"]\nport = 8001\ncommand = ["serve"]\n'
                      'start = "manual"\nstop_grace_s = 0.05\n')
    cfg = load(config)
    layer = FakeLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        try:
            ledger = supervisor.ledger("deepseek")
            now = time.monotonic()
            ledger.record(now - 10)
            ledger.record(now - 5)
            with pytest.raises(ApiError) as refused:
                await supervisor.switch_backend("deepseek", "tiny", graceful=True, by="auto-switch")
            assert refused.value.status == 429 and "max_switches_per_hour" in refused.value.detail
            done = await supervisor.switch_backend("deepseek", "tiny", graceful=True)  # an admin's
            assert done.body["status"] == "switched" and gateway.backends["deepseek"].mode == "tiny"
            status = supervisor.describe("deepseek")["mode_switching"]
            assert status["switches_last_hour"] == 3 and status["max_switches_per_hour"] == 2
        finally:
            await supervisor.close()
            await gateway.close()
