"""Admin commands, each defined once: name, help, arguments, HTTP route and handler.

The control socket and the TCP admin API both serve this registry, and aigwctl builds its one-shot
commands, shell commands, completion and help from the description the daemon hands out.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..bounds import MAX_ARG_TEXT, check_length
from ..errors import bad_request

if TYPE_CHECKING:
    from ..api.context import Services
    from .plane import ControlPlane

ARG_TYPES = ("str", "int", "bool")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Arg:
    name: str
    help: str
    type: str = "str"
    required: bool = False
    positional: bool = False  # aigwctl takes it by position rather than as --name
    choices: tuple[str, ...] = ()
    complete: str | None = None  # live completion data: "model", "resolution" or "user"
    default: Any = None
    secret: bool = False  # prompted for by aigwctl; redacted in the audit trail
    short: str | None = None  # e.g. "-f"
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = MAX_ARG_TEXT  # for strings: longer is a 400 naming the argument

    def __post_init__(self) -> None:
        if self.type not in ARG_TYPES:
            raise ValueError(f"argument {self.name}: type must be one of {ARG_TYPES}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "type": self.type, "required": self.required,
                "positional": self.positional, "choices": list(self.choices), "complete": self.complete,
                "default": self.default, "secret": self.secret, "short": self.short,
                "minimum": self.minimum, "maximum": self.maximum, "max_length": self.max_length}

    def coerce(self, value: Any) -> Any:
        """The value in its declared type, or a 400 that says what to send."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise bad_request(f"{self.name} must be true or false")
        if self.type == "int":
            number = value if isinstance(value, int) and not isinstance(value, bool) else None
            if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 12:
                number = int(value)
            low = self.minimum if self.minimum is not None else -(2**31)
            high = self.maximum if self.maximum is not None else 2**31
            if number is None or not low <= number <= high:
                if self.minimum is not None and self.maximum is not None:
                    raise bad_request(f"{self.name} must be a whole number from {low} to {high}")
                raise bad_request(f"{self.name} must be a whole number")
            return number
        if not isinstance(value, str):
            raise bad_request(f"{self.name} must be a string")
        check_length(self.name, value, self.max_length)
        if self.choices and value not in self.choices:
            raise bad_request(f"{self.name} must be one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Result:
    """What a handler answers: a JSON body and its HTTP status, or a stream of NDJSON objects."""

    body: Any = None
    status: int = 200
    next_cursor: str | None = None  # a paged list's next page; None on its last
    stream: AsyncGenerator[dict[str, Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Context:
    services: Services
    plane: ControlPlane
    actor: str  # token subject on TCP, "uid=N gid=N pid=N" on the socket
    via: str  # "tcp" | "socket" | "signal"


Handler = Callable[[Context, dict[str, Any]], Awaitable[Result]]


@dataclass(frozen=True)
class Command:
    name: str  # words separated by one space, e.g. "users add"
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    method: str = "GET"
    path: str | None = None  # route on the TCP admin API; path parameters are named after arguments
    mutates: bool = False  # changes state: audited
    stream: bool = False  # answers NDJSON lines
    paged: bool = False  # a list taking limit and cursor; the next page's cursor goes in X-Next-Cursor

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "method": self.method, "path": self.path,
                "mutates": self.mutates, "stream": self.stream, "paged": self.paged,
                "args": [a.describe() for a in self.args]}

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert the arguments a client sent; defaults fill the rest."""
        unknown = sorted(set(raw) - {a.name for a in self.args})
        if unknown:
            known = ", ".join(a.name for a in self.args) or "none"
            raise bad_request(f"unknown argument {unknown[0]} for {self.name}; known: {known}")
        args: dict[str, Any] = {}
        for a in self.args:
            value = raw.get(a.name)
            if value is None or value == "":
                if a.required:
                    raise bad_request(f"{a.name} is required for {self.name}")
                args[a.name] = a.default
            else:
                args[a.name] = a.coerce(value)
        return args

    def redacted(self, args: Mapping[str, Any]) -> dict[str, Any]:
        secret = {a.name for a in self.args if a.secret}
        return {k: ("***" if k in secret and v is not None else v) for k, v in args.items()}


class Registry:
    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        for cmd in commands:
            self.add(cmd)

    def add(self, cmd: Command) -> None:
        if cmd.name in self._commands:
            raise ValueError(f"command {cmd.name!r} is defined twice")
        if cmd.name != " ".join(cmd.name.split()):
            raise ValueError(f"command name {cmd.name!r} must be words separated by single spaces")
        self._commands[cmd.name] = cmd

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def describe(self) -> list[dict[str, Any]]:
        return [cmd.describe() for cmd in self]
