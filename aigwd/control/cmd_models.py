"""Commands about the model servers: status, models, start, stop, restart, resolution, queue."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..backends.manager import ActionResult, ModelManager
from ..config import RESOLUTIONS
from ..errors import ApiError, not_found
from ..timefmt import iso
from .registry import Arg, Command, Context, Result

if TYPE_CHECKING:
    from ..api.context import Services

MODEL = Arg("model", "backend name, e.g. gemma or deepseek", required=True, positional=True, complete="model")
# start, stop and restart also take NAME/INDEX: one replica of the model (aigwctl stop gemma/1).
TARGET = Arg("model", "backend name, e.g. gemma, or NAME/INDEX for one replica, e.g. gemma/1", required=True,
             positional=True, complete="model")
INDEX = Arg("index", "replica number, from 0", type="int", required=True, positional=True, minimum=0,
            maximum=9999)
ROLLING = Arg("rolling", "one replica at a time: drain, restart, wait until ready, next", type="bool",
              default=False)
GRACEFUL = Arg("graceful", "let processing requests finish first", type="bool", default=True)


def model_status(services: Services, name: str) -> dict[str, Any]:
    """One backend as /admin/models shows it (also what /health judges)."""
    if services.supervisor is None:
        cfg = services.cfg.backends[name]
        return {"name": name, "status": "unknown", "port": cfg.port, "is_healthy": False}
    return services.supervisor.describe(name)


def models_view(services: Services) -> dict[str, dict[str, Any]]:
    if services.manager is not None:
        return services.manager.status()
    return {name: model_status(services, name) for name in services.cfg.backends}


def _manager(ctx: Context) -> ModelManager:
    if ctx.services.manager is None:
        raise ApiError(503, "model management is not available")
    return ctx.services.manager


def _answer(action: ActionResult) -> Result:
    return Result(action.body, action.http_status)


def gpu_view(services: Services) -> dict[str, Any] | None:
    """The GPU monitor's readings and verdicts, when GPU monitoring is on."""
    return services.gpu.snapshot() if services.gpu is not None else None


def queues_view(services: Services) -> dict[str, dict[str, Any]]:
    gateway = services.gateway
    return {name: {**rt.stats(), "ready": rt.ready, "serving": rt.accepting()}
            for name, rt in gateway.backends.items()}


async def status(ctx: Context, args: dict[str, Any]) -> Result:
    s = ctx.services
    manager = s.manager
    return Result({
        "version": __version__, "pid": os.getpid(), "started_at": iso(s.started_at),
        "uptime_s": int(time.time() - s.started_at), "config": str(s.cfg.path),
        "models": models_view(s), "queues": queues_view(s), "gpus": gpu_view(s),
        "resolutions": manager.resolutions() if manager is not None else list(RESOLUTIONS),
        "model_management": manager is not None, "log_subscribers": ctx.plane.hub.subscribers,
    })


async def models(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(models_view(ctx.services))


def _target(model: str) -> tuple[str, int | None]:
    """NAME, or NAME/INDEX for one replica."""
    name, sep, index = model.partition("/")
    if not sep:
        return model, None
    if not index.isdigit() or len(index) > 4:
        raise ApiError(400, f"a replica is named NAME/INDEX with INDEX a number, e.g. {name[:100]}/1")
    return name, int(index)


async def start(ctx: Context, args: dict[str, Any]) -> Result:
    name, index = _target(args["model"])
    if index is not None:
        if args["resolution"] is not None:
            raise ApiError(400, "resolution applies to the whole model; start it without /INDEX")
        return _answer(await _manager(ctx).replica_action(name, index, "start"))
    return _answer(await _manager(ctx).start(name, args["resolution"]))


async def stop(ctx: Context, args: dict[str, Any]) -> Result:
    name, index = _target(args["model"])
    if index is not None:
        return _answer(await _manager(ctx).replica_action(name, index, "stop", args["graceful"]))
    return _answer(await _manager(ctx).stop(name, args["graceful"]))


async def restart(ctx: Context, args: dict[str, Any]) -> Result:
    name, index = _target(args["model"])
    if index is not None:
        if args["rolling"]:
            raise ApiError(400, "rolling applies to the whole model; restart it without /INDEX")
        return _answer(await _manager(ctx).replica_action(name, index, "restart"))
    return _answer(await _manager(ctx).restart(name, rolling=args["rolling"]))


def _replica(action: str) -> Any:
    async def handler(ctx: Context, args: dict[str, Any]) -> Result:
        return _answer(await _manager(ctx).replica_action(args["model"], args["index"], action,
                                                          args.get("graceful", True)))
    return handler


async def resolution(ctx: Context, args: dict[str, Any]) -> Result:
    if args.get("replica") is None:
        return _answer(await _manager(ctx).switch_resolution(args["resolution"], args["graceful"]))
    return _answer(await _manager(ctx).switch_resolution(args["resolution"], args["graceful"],
                                                         replica=args["replica"]))


async def queue(ctx: Context, args: dict[str, Any]) -> Result:
    gateway = ctx.services.gateway
    asked = args["model"]
    name = gateway.model_index.get(asked, asked)
    rt = gateway.backends.get(name)
    if rt is None:
        raise not_found(f"Model {asked[:100]} not available")
    body: dict[str, Any] = {"model": name, **rt.stats()}
    if gateway.fleet is not None:  # this host's queue holds only what it claimed: the fleet's as well
        body["fleet"] = await gateway.fleet.stats(name, rt.queues.max_waiting)
    return Result(body)


COMMANDS = (
    Command("status", "the daemon at a glance: version, uptime, models, queues, GPUs", status,
            path="/admin/status"),
    Command("models", "state of every model server", models, path="/admin/models"),
    Command("start", "start a model server (NAME/INDEX: one replica)", start, (
        TARGET, Arg("resolution", "OCR resolution mode to start in", complete="resolution")),
        method="POST", path="/admin/models/{model}/start", mutates=True),
    Command("stop", "stop a model server; its models answer 404 until it starts again (NAME/INDEX: one "
                    "replica, the others keep serving)", stop,
            (TARGET, GRACEFUL), method="POST", path="/admin/models/{model}/stop", mutates=True),
    Command("restart", "stop and start a model server (NAME/INDEX: one replica; --rolling: one replica at a "
                       "time, so the model keeps serving)", restart, (TARGET, ROLLING),
            method="POST", path="/admin/models/{model}/restart", mutates=True),
    Command("replica start", "start one replica of a model", _replica("start"), (MODEL, INDEX),
            method="POST", path="/admin/models/{model}/replicas/{index}/start", mutates=True),
    Command("replica stop", "stop one replica of a model; the others keep serving", _replica("stop"),
            (MODEL, INDEX, GRACEFUL), method="POST", path="/admin/models/{model}/replicas/{index}/stop",
            mutates=True),
    Command("replica restart", "restart one replica of a model; the others keep serving", _replica("restart"),
            (MODEL, INDEX), method="POST", path="/admin/models/{model}/replicas/{index}/restart", mutates=True),
    Command("resolution", "switch the OCR server to another resolution mode (with several replicas: one "
                          "replica, the least busy not in the mode unless --replica names one)", resolution, (
        Arg("resolution", "tiny, small, base, large or gundam", required=True, positional=True,
            complete="resolution"), GRACEFUL,
        Arg("replica", "with several replicas: the one to switch, from 0", type="int", minimum=0, maximum=1023)),
        method="POST", path="/admin/ocr/resolution", mutates=True),
    Command("queue", "queue metrics of one model server", queue, (MODEL,), path="/admin/queue/{model}"),
)
