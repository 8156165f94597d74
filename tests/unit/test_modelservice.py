"""A served model's seam: its replicas keep the OCR mode, it announces changes as events, and supervision
drives it through its interface without knowing the gateway."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from aigwd.backends.supervisor import Supervisor
from aigwd.config import Config, load
from aigwd.gateway import Gateway
from aigwd.headers import RequestHeaders
from aigwd.priority import Priority
from aigwd.scheduling.fairqueue import Job
from aigwd.service import Event, Events, Finished, ModeChanged, ModelService, ReadinessChanged, Submitted
from aigwd.store import SqliteStore

from .fakeos import FakeLayer

ROOT = Path(__file__).resolve().parents[2] / "aigwd"


def _config(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "aigw.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n[ocr]\npolicy = "strict"\n'
                    '[backends.deepseek]\nkind = "ocr"\nmodels = ["ocr"]\nport = 8001\ncommand = ["serve", '
                    '"--mode", "{resolution}"]\nstart = "manual"\nstop_grace_s = 0.05\nresolution = "large"\n'
                    + extra)
    return load(path)


async def _never(job: Job) -> str:
    await asyncio.Event().wait()
    return "completed"


def _service(cfg: Config, events: Events, failed: list[tuple[str, str]] | None = None) -> ModelService:
    def fail(rid: str, reason: str) -> None:
        if failed is not None:
            failed.append((rid, reason))

    return ModelService(cfg, cfg.backends["deepseek"], events, runner=_never, on_timeout=lambda j, p: None, fail=fail)


def _job(i: int) -> Job:
    return Job(id=str(i), client_id="c", priority=Priority.NORMAL, enqueued_at=0.0, deadline=1e12)


async def test_the_mode_lives_on_the_replica_and_decides_which_queue_dispatches(tmp_path: Path) -> None:
    events, seen = Events(), []
    events.subscribe(seen.append)
    service = _service(_config(tmp_path), events)
    try:
        service.queues.submit(_job(1), "tiny")
        service.replica_ready(0, True)
        await asyncio.sleep(0.01)
        assert service.mode == "large" and service.queues.processing() == 0  # tiny waits: the server runs large
        service.set_mode(0, "tiny")
        await asyncio.sleep(0.01)
        assert service.replicas[0].mode == "tiny" and service.queues.processing() == 1
        assert service.stats()["active_mode"] == "tiny"
        assert seen == [ReadinessChanged("deepseek", 0, True), ModeChanged("deepseek", 0, "tiny")]
    finally:
        await service.close_queues()


async def test_readiness_is_announced_once_per_change_and_hold_stops_every_replica(tmp_path: Path) -> None:
    events, seen = Events(), []
    events.subscribe(seen.append)
    service = _service(_config(tmp_path), events)
    try:
        service.replica_ready(0, True)
        service.replica_ready(0, True)  # health checks repeat it: no new event
        assert service.ready and seen == [ReadinessChanged("deepseek", 0, True)]
        service.hold()
        assert not service.ready and seen[-1] == ReadinessChanged("deepseek", 0, False)
    finally:
        await service.close_queues()


async def test_an_admin_stop_closes_admission_and_a_restart_keeps_it_open(tmp_path: Path) -> None:
    service = _service(_config(tmp_path), Events())
    try:
        assert service.accepting()  # nothing supervises it: nothing says otherwise
        service.stopped_by_admin = True
        assert not service.accepting()
        service.stopped_by_admin, service.changing = False, True
        assert service.accepting()  # a restart under way: requests wait for the new server
    finally:
        await service.close_queues()


async def test_given_up_requests_go_to_the_owner_with_the_reason(tmp_path: Path) -> None:
    failed: list[tuple[str, str]] = []
    service = _service(_config(tmp_path), Events(), failed)
    try:
        service.queues.submit(_job(1), "tiny")
        service.queues.submit(_job(2), "large")
        assert service.fail_waiting("model stopped") == 2
        assert sorted(failed) == [("1", "model stopped"), ("2", "model stopped")]
    finally:
        await service.close_queues()


def test_a_failing_listener_does_not_stop_the_others() -> None:
    events, seen = Events(), []

    def broken(event: Event) -> None:
        raise RuntimeError("a bug")

    events.subscribe(broken)
    unsubscribe = events.subscribe(seen.append)
    events.notify(Submitted("m"))
    unsubscribe()
    events.notify(Submitted("m"))
    assert seen == [Submitted("m")]


async def test_supervision_starts_the_server_in_the_replicas_mode_and_learns_of_requests_by_events(
        tmp_path: Path) -> None:
    cfg_ = _config(tmp_path, '\n[backends.gemma]\nkind = "chat"\nmodels = ["g"]\nport = 8002\n'
                             'command = ["serve"]\nstart = "on-demand"\n')
    layer = FakeLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg_, store)
        supervisor = Supervisor(cfg_, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        try:
            await supervisor.start("deepseek", "tiny")
            assert layer.spawned[-1][0] == ["serve", "--mode", "tiny"]
            assert layer.spawned[-1][1]["AIGW_OCR_MODE"] == "tiny"
            assert gateway.backends["deepseek"].ready and supervisor.describe("deepseek")["resolution"] == "tiny"
            # An accepted request is announced; supervision starts the on-demand server on it.
            gemma = gateway.backends["gemma"]
            await gateway.submit(gemma, subject="alice", headers=RequestHeaders("app", Priority.NORMAL),
                                 model="g", payload=b'{"model": "g"}')
            for _ in range(200):
                if gemma.ready:
                    break
                await asyncio.sleep(0.01)
            assert gemma.ready and len(layer.spawned) == 2
        finally:
            await supervisor.close()
            await gateway.close()


def test_finished_events_carry_whether_the_request_reached_a_server() -> None:
    events, seen = Events(), []
    events.subscribe(seen.append)
    events.notify(Finished("m", "timeout", True))
    assert seen == [Finished("m", "timeout", True)]


def _imports(path: Path) -> set[str]:
    """The aigwd modules a source file imports, as dotted names relative to the package."""
    found: set[str] = set()
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("below", ["service", "backends", "scheduling"])
def test_nothing_below_a_model_service_imports_what_is_above_it(below: str) -> None:
    above = {"aigwd.gateway", "aigwd.api", "aigwd.control", "aigwd.daemon"}
    if below != "backends":
        above.add("aigwd.backends.supervisor")
    for path in sorted((ROOT / below).rglob("*.py")):
        bad = {m for m in _imports(path) if any(m == a or m.startswith(a + ".") for a in above)}
        assert not bad, f"{path.relative_to(ROOT.parent)} imports {sorted(bad)}"
