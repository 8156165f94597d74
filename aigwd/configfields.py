"""How a setting is declared (its default, help and check) and the checks every section shares.

Each section's dataclass lives with its concern (config.py, storeconfig.py, pdf/settings.py); what a field
holds and how a value is refused is defined once, here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field
from typing import Any


class ConfigError(Exception):
    """A setting is wrong; the message names the file, the key and the problem."""


Check = Callable[[Any], str | None]


def opt(default: Any, help: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check})


def opt_factory(factory: Callable[[], Any], help: str, check: Check | None = None) -> Any:
    return field(default_factory=factory, metadata={"help": help, "check": check})


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def type_ok(value: Any, tp: Any) -> bool:
    if tp in ("float", float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp in ("int", int):
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in ("str", str):
        return isinstance(value, str)
    if tp in ("bool", bool):
        return isinstance(value, bool)
    if tp == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if tp == "list[int]":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if tp == "list[dict[str, Any]]":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    if tp == "dict[str, str]":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if tp == "dict[str, Any]":
        return isinstance(value, dict)
    return True


# No setting means anything past this (a billion seconds is 31 years), and arithmetic on a larger one,
# or on inf and nan, fails or overflows far from the config file (a sleep, a timestamp, an int()).
MAX_NUMBER = 1_000_000_000


def number_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number (not inf or nan)"
    if abs(value) > MAX_NUMBER:
        return f"must be between -{MAX_NUMBER:,} and {MAX_NUMBER:,}"
    return None
