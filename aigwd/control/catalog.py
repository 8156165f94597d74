"""Every admin command, in the order help lists them."""

from __future__ import annotations

from . import (
    cmd_autoswitch,
    cmd_batches,
    cmd_fleet,
    cmd_keys,
    cmd_models,
    cmd_records,
    cmd_system,
    cmd_usage,
    cmd_users,
)
from .registry import Registry


def default_registry(fleet: bool = False) -> Registry:
    """fleet=True (a host with [store] url): with `fleet`, and a `node` the model commands may name."""
    commands = [*cmd_models.COMMANDS, *cmd_records.COMMANDS, *cmd_users.COMMANDS, *cmd_keys.COMMANDS,
                *cmd_usage.COMMANDS, *cmd_autoswitch.COMMANDS, *cmd_batches.COMMANDS, *cmd_system.COMMANDS]
    if not fleet:
        return Registry(commands)
    return Registry(cmd_fleet.with_fleet([*commands, *cmd_fleet.COMMANDS]))
