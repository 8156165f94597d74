"""Every admin command, in the order help lists them."""

from __future__ import annotations

from . import cmd_autoswitch, cmd_batches, cmd_keys, cmd_models, cmd_records, cmd_system, cmd_usage, cmd_users
from .registry import Registry


def default_registry() -> Registry:
    return Registry([*cmd_models.COMMANDS, *cmd_records.COMMANDS, *cmd_users.COMMANDS, *cmd_keys.COMMANDS,
                     *cmd_usage.COMMANDS, *cmd_autoswitch.COMMANDS, *cmd_batches.COMMANDS, *cmd_system.COMMANDS])
