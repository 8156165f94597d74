"""The command registry: argument checks, descriptions, and the contract's routes."""

from __future__ import annotations

import pytest

from aigwd.control.catalog import default_registry
from aigwd.control.registry import Arg, Command, Registry, Result
from aigwd.errors import ApiError


async def _noop(ctx: object, args: dict[str, object]) -> Result:
    return Result({})


def test_arguments_are_converted_and_checked() -> None:
    cmd = Command("demo", "help", _noop, (
        Arg("name", "n", required=True, positional=True),
        Arg("count", "c", type="int", default=3, minimum=1, maximum=5),
        Arg("force", "f", type="bool", default=False),
        Arg("mode", "m", choices=("a", "b")),
        Arg("secret", "s", secret=True)))
    assert cmd.parse({"name": "x"}) == {"name": "x", "count": 3, "force": False, "mode": None, "secret": None}
    assert cmd.parse({"name": "x", "count": "5", "force": "yes", "mode": "b"})["count"] == 5
    assert cmd.parse({"name": "x", "count": 2, "force": True})["force"] is True
    for raw, detail in (({}, "name is required for demo"), ({"name": ""}, "name is required for demo"),
                        ({"name": "x", "count": "9"}, "count must be a whole number from 1 to 5"),
                        ({"name": "x", "count": True}, "count must be a whole number from 1 to 5"),
                        ({"name": "x", "force": "perhaps"}, "force must be true or false"),
                        ({"name": "x", "mode": "c"}, "mode must be one of a, b"),
                        ({"name": 5}, "name must be a string"),
                        ({"name": "x" * 2000}, "name is longer than 1024 characters"),
                        ({"name": "x", "other": 1}, "unknown argument other for demo; known: name, count, force, "
                                                    "mode, secret")):
        with pytest.raises(ApiError) as err:
            cmd.parse(raw)
        assert (err.value.status, err.value.detail) == (400, detail)
    assert cmd.redacted({"name": "x", "secret": "hunter2"}) == {"name": "x", "secret": "***"}
    described = cmd.describe()
    assert described["args"][1] == {"name": "count", "help": "c", "type": "int", "required": False,
                                    "positional": False, "choices": [], "complete": None, "default": 3,
                                    "secret": False, "short": None, "minimum": 1, "maximum": 5,
                                    "max_length": 1024}


def test_registry_refuses_duplicates_and_bad_names() -> None:
    reg = Registry([Command("a b", "", _noop)])
    with pytest.raises(ValueError):
        reg.add(Command("a b", "", _noop))
    with pytest.raises(ValueError):
        reg.add(Command("a  c", "", _noop))
    with pytest.raises(ValueError):
        Arg("x", "", type="float")


def test_the_contract_routes_come_from_the_registry() -> None:
    routes = {(c.method, c.path): c for c in default_registry() if c.path}
    for method, path in (("GET", "/admin/models"), ("POST", "/admin/models/{model}/start"),
                         ("POST", "/admin/models/{model}/stop"), ("POST", "/admin/ocr/resolution"),
                         ("GET", "/admin/queue/{model}"), ("GET", "/admin/crashes"),
                         ("GET", "/admin/missing-models")):
        assert (method, path) in routes, path
    names = {c.name for c in default_registry()}
    assert {"status", "models", "start", "stop", "restart", "resolution", "queue", "crashes", "missing", "audit",
            "users add", "users passwd", "users del", "users list", "tokens revoke", "reload", "logs"} <= names
    mutating = {c.name for c in default_registry() if c.mutates}
    assert {"start", "stop", "restart", "resolution", "users add", "users passwd", "users del", "tokens revoke",
            "reload"} <= mutating
    assert not {"status", "models", "queue", "crashes", "missing", "audit", "users list", "logs"} & mutating
    secrets = {(c.name, a.name) for c in default_registry() for a in c.args if a.secret}
    assert secrets == {("users add", "password"), ("users passwd", "password")}
