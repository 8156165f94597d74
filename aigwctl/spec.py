"""The admin commands as the daemon describes them, and how their words become arguments.

aigwctl has no list of commands of its own: the daemon hands out its registry (name, help,
arguments, route) and everything here is built from that description.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


class UsageError(Exception):
    """The words do not make a valid command; the message says what is wrong."""


class HelpShown(Exception):
    """A command's --help was printed; nothing is to run."""


@dataclass(frozen=True)
class ArgSpec:
    name: str
    help: str
    type: str = "str"
    required: bool = False
    positional: bool = False
    choices: tuple[str, ...] = ()
    complete: str | None = None
    default: Any = None
    secret: bool = False
    short: str | None = None
    minimum: int | None = None
    maximum: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArgSpec:
        return cls(name=str(d["name"]), help=str(d.get("help", "")), type=str(d.get("type", "str")),
                   required=bool(d.get("required")), positional=bool(d.get("positional")),
                   choices=tuple(d.get("choices") or ()), complete=d.get("complete"), default=d.get("default"),
                   secret=bool(d.get("secret")), short=d.get("short"), minimum=d.get("minimum"),
                   maximum=d.get("maximum"))

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def takes_value(self) -> bool:
        return self.type != "bool"


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str
    args: tuple[ArgSpec, ...] = ()
    method: str = "GET"
    path: str | None = None
    mutates: bool = False
    stream: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CommandSpec:
        return cls(name=str(d["name"]), help=str(d.get("help", "")),
                   args=tuple(ArgSpec.from_json(a) for a in d.get("args") or ()),
                   method=str(d.get("method", "GET")), path=d.get("path"), mutates=bool(d.get("mutates")),
                   stream=bool(d.get("stream")))

    @property
    def words(self) -> list[str]:
        return self.name.split()

    def positionals(self) -> list[ArgSpec]:
        return [a for a in self.args if a.positional and not a.secret]

    def options(self) -> list[ArgSpec]:
        return [a for a in self.args if not a.positional and not a.secret]

    def secrets(self) -> list[ArgSpec]:
        return [a for a in self.args if a.secret]


def index(specs: Iterable[CommandSpec]) -> dict[str, CommandSpec]:
    return {s.name: s for s in specs}


def find(specs: Mapping[str, CommandSpec], words: Sequence[str]) -> tuple[CommandSpec | None, list[str]]:
    """The command named by the first words (the longest that matches) and the words after it."""
    for n in range(min(len(words), 3), 0, -1):
        spec = specs.get(" ".join(words[:n]))
        if spec is not None:
            return spec, list(words[n:])
    return None, list(words)


def groups(specs: Mapping[str, CommandSpec]) -> dict[str, list[CommandSpec]]:
    """Commands by their first word, e.g. "users" -> users add, users del, ..."""
    out: dict[str, list[CommandSpec]] = {}
    for spec in specs.values():
        out.setdefault(spec.words[0], []).append(spec)
    return out


class RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser for the shell: errors and --help raise instead of leaving the process."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().strip()}\n{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(message or f"{self.prog}: usage error")
        raise HelpShown()


def _int_type(arg: ArgSpec) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        low, high = arg.minimum, arg.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}")
        return value

    convert.__name__ = "whole number"
    return convert


def add_arguments(parser: argparse.ArgumentParser, spec: CommandSpec) -> None:
    for arg in spec.positionals():
        kwargs: dict[str, Any] = {"help": arg.help, "metavar": arg.name.upper()}
        if arg.choices:
            kwargs["choices"] = arg.choices
        if arg.type == "int":
            kwargs["type"] = _int_type(arg)
        if not arg.required:
            kwargs.update(nargs="?", default=arg.default)
        parser.add_argument(arg.name, **kwargs)
    for arg in spec.options():
        flags = [arg.option] + ([arg.short] if arg.short else [])
        if arg.type == "bool":
            parser.add_argument(*flags, dest=arg.name, action=argparse.BooleanOptionalAction, default=arg.default,
                                help=arg.help)
            continue
        kwargs = {"dest": arg.name, "help": arg.help, "default": arg.default,
                  "metavar": arg.name.upper()}
        if arg.choices:
            kwargs["choices"] = arg.choices
        if arg.type == "int":
            kwargs["type"] = _int_type(arg)
        parser.add_argument(*flags, **kwargs)


def values(spec: CommandSpec, ns: argparse.Namespace) -> dict[str, Any]:
    """The arguments to send: what was given or defaulted, without secrets (asked for separately)."""
    out: dict[str, Any] = {}
    for arg in spec.args:
        if arg.secret:
            continue
        value = getattr(ns, arg.name, None)
        if value is not None:
            out[arg.name] = value
    return out


def parse_words(spec: CommandSpec, words: Sequence[str]) -> dict[str, Any]:
    """The shell's words after a command name -> its arguments; UsageError or HelpShown otherwise."""
    parser = RaisingParser(prog=spec.name, description=spec.help, add_help=True)
    add_arguments(parser, spec)
    return values(spec, parser.parse_args(list(words)))


def usage(spec: CommandSpec) -> str:
    parser = RaisingParser(prog=spec.name, description=spec.help, add_help=True)
    add_arguments(parser, spec)
    return parser.format_help()
