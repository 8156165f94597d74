"""What the shell suggests after the words typed so far: pure functions, plus the prompt-toolkit adapter.

Live values (model names, resolutions, users) come from a CompletionData that a background refresh
replaces whole, so a completion never sees half an update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from .spec import ArgSpec, CommandSpec, find, groups

BUILTINS: dict[str, str] = {
    "help": "list the commands, or show one command's arguments: help COMMAND",
    "watch": "live view of models and queues (q quits, p pauses, s changes the sort)",
    "top": "the same as watch",
    "exit": "leave the shell (Ctrl-D does too)",
    "quit": "leave the shell",
}


@dataclass(frozen=True)
class CompletionData:
    models: tuple[str, ...] = ()
    resolutions: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def values(self, key: str | None) -> tuple[str, ...]:
        return {"model": self.models, "resolution": self.resolutions, "user": self.users}.get(key or "", ())


def split(text: str) -> tuple[list[str], str]:
    """Complete words before the cursor, and the word being typed ("" after a space)."""
    words = text.split()
    if text and not text[-1].isspace() and words:
        return words[:-1], words[-1]
    return words, ""


def arg_values(arg: ArgSpec, data: CompletionData) -> Iterable[str]:
    if arg.choices:
        return arg.choices
    if arg.type == "bool":
        return ("true", "false")
    return data.values(arg.complete)


def _option_names(spec: CommandSpec, used: set[str]) -> list[str]:
    names: list[str] = []
    for arg in spec.options():
        if arg.name in used:
            continue
        names.append(arg.option)
        if arg.type == "bool":
            names.append("--no-" + arg.option[2:])
    return names


def _by_flag(spec: CommandSpec) -> dict[str, ArgSpec]:
    flags: dict[str, ArgSpec] = {}
    for arg in spec.options():
        flags[arg.option] = arg
        if arg.short:
            flags[arg.short] = arg
        if arg.type == "bool":
            flags["--no-" + arg.option[2:]] = arg
    return flags


def _after_command(spec: CommandSpec, rest: list[str], data: CompletionData, partial: str) -> Iterable[str]:
    flags = _by_flag(spec)
    if rest and rest[-1] in flags and flags[rest[-1]].takes_value:
        return arg_values(flags[rest[-1]], data)
    used: set[str] = set()
    given = 0
    skip = False
    for word in rest:
        if skip:
            skip = False
            continue
        flag = flags.get(word.split("=", 1)[0])
        if flag is not None:
            used.add(flag.name)
            skip = flag.takes_value and "=" not in word
        elif not word.startswith("-"):
            given += 1
    options = _option_names(spec, used)
    if partial.startswith("-"):
        return options
    positionals = spec.positionals()
    if given < len(positionals):
        return arg_values(positionals[given], data)
    return options


def suggest(text: str, specs: Mapping[str, CommandSpec], data: CompletionData) -> list[str]:
    """Every word that may come next after `text`, filtered by the word being typed."""
    words, partial = split(text)
    by_group = groups(specs)
    candidates: Iterable[str]
    if not words:
        candidates = [*by_group, *BUILTINS]
    elif words[0] == "help":
        topic = words[1:]
        if not topic:
            candidates = list(by_group)
        elif len(topic) == 1 and topic[0] in by_group:
            candidates = [s.words[1] for s in by_group[topic[0]] if len(s.words) > 1]
        else:
            candidates = []
    elif words[0] in BUILTINS:
        candidates = []
    else:
        spec, rest = find(specs, words)
        if spec is not None:
            candidates = _after_command(spec, rest, data, partial)
        elif len(words) == 1 and words[0] in by_group:
            candidates = [s.words[1] for s in by_group[words[0]] if len(s.words) > 1]
        else:
            candidates = []
    return sorted({c for c in candidates if c.startswith(partial)})


class ShellCompleter(Completer):
    def __init__(self, specs: Callable[[], Mapping[str, CommandSpec]], data: Callable[[], CompletionData]) -> None:
        self._specs = specs
        self._data = data

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        _, partial = split(text)
        for word in suggest(text, self._specs(), self._data()):
            yield Completion(word, start_position=-len(partial))
