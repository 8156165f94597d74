"""Several servers of one model: their settings, where each is placed, which one a request goes to, and
that the model keeps serving while one of them is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest

from aigwd.backends.engineload import EngineLoad, parse
from aigwd.backends.supervisor import Supervisor
from aigwd.config import Config, ConfigError, load
from aigwd.errors import ApiError
from aigwd.gateway import Gateway
from aigwd.priority import Priority
from aigwd.scheduling.fairqueue import Job
from aigwd.service import Events, ModelService
from aigwd.store import SqliteStore

from .fakeos import FakeLayer, FakeProcess

BASE = '[server]\nstate_dir = "{state}"\n[backends.gemma]\nkind = "chat"\nmodels = ["g"]\nport = 8000\n' \
       'command = ["serve", "--port", "{{port}}", "--gpu", "{{gpu}}"]\nstop_grace_s = 0.05\n'


def _config(tmp_path: Path, extra: str = "", tail: str = "") -> Config:
    path = tmp_path / "aigw.toml"
    path.write_text(BASE.format(state=tmp_path / "state") + extra + tail)
    return load(path)


def _problem(tmp_path: Path, extra: str, tail: str = "") -> str:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, extra, tail)
    return str(err.value)


# --- settings ---------------------------------------------------------------------------------------

def test_a_backend_without_replica_settings_has_one_server_on_its_port_and_gpu(tmp_path: Path) -> None:
    b = _config(tmp_path).backends["gemma"]
    assert b.managed_replicas == 1 and b.replica_ports() == [8000] and b.replica_gpu(0) == 0
    assert b.external_urls == []


def test_replicas_take_consecutive_ports_and_one_gpu_each(tmp_path: Path) -> None:
    b = _config(tmp_path, "gpus = [2, 3, 5]\n").backends["gemma"]
    assert b.managed_replicas == 3 and b.replica_ports() == [8000, 8001, 8002]
    assert [b.replica_gpu(i) for i in range(3)] == [2, 3, 5]
    same = _config(tmp_path, "replicas = 2\ngpu = 1\n").backends["gemma"]
    assert same.replica_ports() == [8000, 8001] and [same.replica_gpu(i) for i in range(2)] == [1, 1]


def test_replica_settings_that_cannot_work_are_refused_with_what_to_change(tmp_path: Path) -> None:
    assert "one per replica" in _problem(tmp_path, "replicas = 3\ngpus = [0, 1]\n")
    assert "between 1 and" in _problem(tmp_path, "replicas = 0\n")
    clash = '[backends.other]\nkind = "chat"\nmodels = ["o"]\nport = 8001\ncommand = ["serve"]\n'
    assert "port 8001 is already used by gemma" in _problem(tmp_path, "replicas = 2\n", clash)
    assert "url must be http://HOST:PORT" in _problem(
        tmp_path, "", '[[backends.gemma.external]]\nurl = "http://10.0.0.5:8000/v1"\n')
    assert "exactly url" in _problem(tmp_path, "", '[[backends.gemma.external]]\nhost = "10.0.0.5"\n')


def test_external_servers_are_replicas_after_the_ones_aigw_runs(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "replicas = 2\n", '[[backends.gemma.external]]\nurl = "http://10.0.0.5:8000"\n')
    service = ModelService(cfg, cfg.backends["gemma"], Events(), runner=_never, on_timeout=lambda j, p: None,
                           fail=lambda rid, reason: None)
    assert [(r.index, r.external, r.url) for r in service.replicas] == [
        (0, False, "http://127.0.0.1:8000"), (1, False, "http://127.0.0.1:8001"), (2, True, "http://10.0.0.5:8000")]


# --- routing ----------------------------------------------------------------------------------------

async def _never(job: Job) -> str:
    await asyncio.Event().wait()
    return "completed"


def _service(tmp_path: Path, replicas: int = 3) -> ModelService:
    cfg = _config(tmp_path, f"replicas = {replicas}\nmax_concurrent = 2\n")
    return ModelService(cfg, cfg.backends["gemma"], Events(), runner=_never, on_timeout=lambda j, p: None,
                        fail=lambda rid, reason: None)


async def test_a_request_goes_to_the_ready_replica_with_the_lowest_load(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        for r in service.replicas:
            service.replica_ready(r.index, True)
        got = [service.acquire(f"r{i}", None).index for i in range(6)]
        assert sorted(got) == [0, 0, 1, 1, 2, 2]  # each takes its share before any takes a third
        service.release(service.replicas[1], "r1")
        service.release(service.replicas[1], "r4")
        assert service.pick(None).index == 1
        service.replica_ready(1, False)  # not ready: never picked, however idle
        assert service.pick(None).index in (0, 2)
    finally:
        await service.close_queues()


async def test_ties_go_to_the_replica_whose_engine_reports_less_work(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        for r in service.replicas:
            service.replica_ready(r.index, True)
        service.replicas[0].engine = (3.0, 2.0)
        service.replicas[1].engine = (0.0, 2.0)
        service.replicas[2].engine = (0.0, 1.0)
        assert service.pick(None).index == 2
        service.replicas[2].jobs.add("x")  # busier by aigw's own count: that comes first
        assert service.pick(None).index == 1
    finally:
        await service.close_queues()


async def test_the_queue_runs_as_many_at_once_as_the_ready_replicas_have_slots(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        for i in range(10):
            service.queues.submit(Job(id=str(i), client_id="c", priority=Priority.NORMAL, enqueued_at=0.0,
                                      deadline=1e12), None)
        service.replica_ready(0, True)
        await asyncio.sleep(0)
        assert service.queues.processing() == 2
        service.replica_ready(2, True)
        await asyncio.sleep(0)
        assert service.queues.processing() == 4 and service.stats()["max_concurrent"] == 4
        rows = service.stats()["replicas"]
        assert isinstance(rows, list) and [(r["index"], r["ready"], r["slots"]) for r in rows] == [
            (0, True, 2), (1, False, 2), (2, True, 2)]
    finally:
        await service.close_queues()


# --- supervision ------------------------------------------------------------------------------------

class PortLayer(FakeLayer):
    """Each server answers its own health URL: its process is found by the port it was started on."""

    def __init__(self) -> None:
        super().__init__()
        self.by_port: dict[int, FakeProcess] = {}

    async def spawn(self, argv: list[str], env: dict[str, str], output: object) -> FakeProcess:
        proc = await super().spawn(argv, env, output)  # type: ignore[arg-type]
        self.by_port[int(argv[argv.index("--port") + 1])] = proc
        return proc

    async def probe(self, url: str, timeout_s: float) -> bool:
        await asyncio.sleep(0)
        proc = self.by_port.get(int(url.rsplit(":", 1)[1].split("/")[0]))
        return self.healthy and proc is not None and proc.returncode is None

    def gpus_of(self, ports: Iterable[int]) -> list[str]:
        """The --gpu argument each server was started with."""
        argvs = [self.spawned[self.processes.index(self.by_port[p])][0] for p in ports]
        return [argv[argv.index("--gpu") + 1] for argv in argvs]


async def _until(predicate: object, what: str) -> None:
    for _ in range(500):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_each_replica_runs_on_its_port_and_gpu_and_the_model_outlives_one_crash(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "gpus = [0, 1]\nstart = \"manual\"\n")
    layer = PortLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        service = gateway.backends["gemma"]
        try:
            done = await supervisor.start("gemma")
            assert done.body["status"] == "started"
            await _until(lambda: all(r.ready for r in service.replicas), "both replicas ready")
            assert sorted(layer.by_port) == [8000, 8001] and layer.gpus_of([8000, 8001]) == ["0", "1"]
            layer.spawn_error = OSError("no such file")  # its restarts fail until it is given up
            layer.by_port[8001].exit(-9)  # replica 1 dies
            await _until(lambda: supervisor.servers["gemma"][1].state.value == "fatal", "replica 1 given up")
            row = supervisor.describe("gemma")
            assert row["is_healthy"] and service.ready and service.pick(None).index == 0
            assert [(r["index"], r["port"], r["gpu"], r["state"]) for r in row["replicas"]] == [
                (0, 8000, 0, "running"), (1, 8001, 1, "fatal")]
            assert not row["replicas"][1]["is_healthy"] and row["replicas"][0]["pid"] is not None
            assert service.accepting() and not service.replicas[1].ready
        finally:
            await supervisor.close()
            await gateway.close()


async def test_a_rolling_restart_after_a_reload_moves_the_running_replicas_onto_the_new_command_one_by_one(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path, "replicas = 3\nstart = \"manual\"\n")
    layer = PortLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        service, servers = gateway.backends["gemma"], supervisor.servers["gemma"]
        try:
            for index in (0, 1):  # replica 2 stays stopped
                assert (await supervisor.replica_action("gemma", index, "start")).body["status"] == "started"
            serving: list[int] = []
            service.events.subscribe(lambda event: serving.append(sum(r.ready for r in service.replicas)))
            cfg.backends["gemma"].command = [*cfg.backends["gemma"].command, "--new"]  # what a reload does
            supervisor.roll("gemma", "config reload")
            await _until(lambda: len(layer.spawned) == 4 and all(s.running for s in servers[:2]), "both rolled")
            assert [(argv[argv.index("--port") + 1], argv[-1]) for argv, _ in layer.spawned[2:]] == [
                ("8000", "--new"), ("8001", "--new")]
            assert min(serving) == 1  # one replica at a time: the model never stopped serving
            assert servers[2].state.value == "stopped" and not supervisor.switching("gemma")
        finally:
            await supervisor.close()
            await gateway.close()


async def test_a_replica_that_does_not_come_up_on_the_new_command_stops_the_rolling_restart_there(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path, "replicas = 2\nmax_start_failures = 1\n")
    layer = PortLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        servers = supervisor.servers["gemma"]
        try:
            supervisor.start_all()
            await _until(lambda: all(s.running for s in servers), "both servers up")
            second = servers[1].pid
            cfg.backends["gemma"].command = ["no-such-server"]
            layer.spawn_error = OSError("no such file")
            with caplog.at_level(logging.INFO, logger="aigw"):
                supervisor.roll("gemma", "config reload")
                await _until(lambda: "event=rolling_restart_stopped" in caplog.text, "the rolling restart stopped")
            assert "gemma/0 did not come back" in caplog.text
            # Replica 1 was never touched: the model serves on it, on the old command line.
            assert servers[0].state.value == "fatal" and servers[1].running and servers[1].pid == second
            assert gateway.backends["gemma"].ready and not supervisor.switching("gemma")
        finally:
            await supervisor.close()
            await gateway.close()


async def test_with_one_replica_the_rolling_restart_is_a_plain_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    layer = PortLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        server = supervisor.servers["gemma"][0]
        try:
            supervisor.start_all()
            await _until(lambda: server.running, "the server up")
            first = server.pid
            cfg.backends["gemma"].command = [*cfg.backends["gemma"].command, "--new"]
            supervisor.roll("gemma", "config reload")
            await _until(lambda: server.running and server.pid != first, "the server restarted")
            assert layer.spawned[-1][0][-1] == "--new" and len(layer.spawned) == 2
            with pytest.raises(ApiError) as err:
                supervisor.roll("nope", "config reload")
            assert err.value.status == 404
        finally:
            await supervisor.close()
            await gateway.close()


# --- the engines' own counts --------------------------------------------------------------------------

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="g"} 3.0
vllm:num_requests_running{engine="1",model_name="g"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="g"} 7.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
vllm:prompt_tokens_total{engine="0",model_name="g"} 1234.0
"""


def test_the_engines_waiting_and_running_counts_are_read_from_vllm_metrics() -> None:
    assert parse(VLLM_METRICS) == (7.0, 4.0)
    assert parse("vllm:num_requests_waiting 2\ngarbage {\n") == (2.0, 0.0)


async def test_a_replica_that_answers_no_metrics_counts_as_unknown_not_busy(tmp_path: Path) -> None:
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=VLLM_METRICS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    service = _service(tmp_path, replicas=2)
    try:
        service.replicas[0].upstream.base_url = f"http://127.0.0.1:{port}"
        service.replicas[1].upstream.base_url = "http://127.0.0.1:9"  # nothing listens
        service.replicas[1].engine = (5.0, 5.0)
        for r in service.replicas:
            service.replica_ready(r.index, True)
        load = EngineLoad([service])
        await load.poll_once()
        assert service.replicas[0].engine == (7.0, 4.0) and service.replicas[1].engine == (0.0, 0.0)
        assert service.pick(None).index == 1
    finally:
        assert load._session is not None
        await load._session.close()
        await service.close_queues()
        await runner.cleanup()


# --- a model served only by servers aigw does not run ----------------------------------------------------

async def test_a_backend_of_external_servers_only_is_checked_routed_and_reported_never_run(tmp_path: Path) -> None:
    path = tmp_path / "aigw.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n[backends.far]\nkind = "chat"\nmodels = ["f"]\n'
                    '[[backends.far.external]]\nurl = "http://10.0.0.5:8000"\n'
                    '[[backends.far.external]]\nurl = "http://10.0.0.6:8000"\n')
    cfg = load(path)
    assert cfg.backends["far"].managed_replicas == 0 and cfg.backends["far"].replica_ports() == []
    layer = FakeLayer()
    up = {"http://10.0.0.5:8000/health"}

    async def probe(url: str, timeout_s: float) -> bool:
        return url in up

    layer.probe = probe  # type: ignore[method-assign]
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        service = gateway.backends["far"]
        try:
            for external in supervisor.externals["far"]:
                await external.check_once()
            assert [r.ready for r in service.replicas] == [True, False] and service.pick(None).index == 0
            row = supervisor.describe("far")
            assert row["is_healthy"] and row["pid"] is None and row["start"] == "external"
            assert [(r["index"], r["state"], r["url"]) for r in row["replicas"]] == [
                (0, "running", "http://10.0.0.5:8000"), (1, "unreachable", "http://10.0.0.6:8000")]
            assert layer.spawned == []
            with pytest.raises(ApiError) as err:
                await supervisor.restart("far")
            assert err.value.status == 400 and "never started, stopped or restarted" in err.value.detail
            assert (await supervisor.stop("far")).body["status"] == "stopped" and not service.accepting()
            assert supervisor.describe("far")["status"] == "stopped"
            assert (await supervisor.start("far")).body["status"] == "started" and service.accepting()
        finally:
            await supervisor.close()
            await gateway.close()
