"""`aigwctl [--socket PATH | --url URL --token TOKEN] [--json] [COMMAND ...]`.

With a COMMAND it runs that one admin command and exits; without one it opens the admin shell.
The commands are the daemon's: aigwctl asks it for their list, arguments and help.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import render
from .client import DEFAULT_SOCKET, Client, CommandFailed, HttpClient, SocketClient, Unreachable
from .repl import Shell
from .safe import text as safe
from .spec import CommandSpec, add_arguments, groups, index, values

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = """\
Without a COMMAND, aigwctl opens the admin shell (completion, history, live toolbar, watch).

Exit codes:
  0    success
  1    the command failed; the daemon's answer says why
  2    usage error (unknown command, missing or bad argument)
  3    the daemon is unreachable (not running, wrong socket path, or no permission:
       the control socket is open to root and the members of its group, aigw-admin by default)
  130  interrupted (Ctrl-C)

Environment: AIGW_SOCKET (the control socket), AIGW_URL and AIGW_TOKEN (a gateway's TCP admin API)."""


def global_parser(add_help: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aigwctl", description="Admin client and shell for aigwd.", epilog=EPILOG, add_help=add_help,
        allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=os.environ.get("AIGW_SOCKET") or DEFAULT_SOCKET,
                   help=f"control socket of the local daemon (default: $AIGW_SOCKET or {DEFAULT_SOCKET})")
    p.add_argument("--url", default=os.environ.get("AIGW_URL") or None,
                   help="a gateway's URL: speak to its TCP admin API instead (needs --token)")
    p.add_argument("--token", default=os.environ.get("AIGW_TOKEN", ""), help="admin access token for --url")
    p.add_argument("--json", action="store_true", help="print answers as JSON")
    return p


def command_parser(specs: Mapping[str, CommandSpec]) -> argparse.ArgumentParser:
    """The global options plus one subcommand per registry command (nested for "users add" and the like)."""
    p = global_parser(add_help=True)
    sub = p.add_subparsers(dest="_command", metavar="COMMAND", required=True)
    for group, members in groups(specs).items():
        if len(members) == 1 and members[0].name == group:
            spec = members[0]
            sp = sub.add_parser(group, help=spec.help, description=spec.help)
            sp.set_defaults(_spec=spec.name)
            add_arguments(sp, spec)
            continue
        gp = sub.add_parser(group, help=f"{group}: " + ", ".join(m.words[-1] for m in members),
                            description=f"{group} commands")
        gsub = gp.add_subparsers(dest="_action", metavar="ACTION", required=True)
        for spec in members:
            sp = gsub.add_parser(spec.words[-1], help=spec.help, description=spec.help)
            sp.set_defaults(_spec=spec.name)
            add_arguments(sp, spec)
    return p


def read_secret(name: str) -> str:
    """From the terminal (asked twice), else one line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"{name}: ")
        if first != getpass.getpass(f"{name} again: "):
            raise ValueError(f"the two {name}s differ")
        return first
    return sys.stdin.readline().rstrip("\n")


async def one_shot(client: Client, as_json: bool, words: Sequence[str]) -> int:
    wants_help = any(w in ("-h", "--help") for w in words)
    try:
        specs = index(await client.commands())
    except Unreachable as exc:
        if wants_help:
            global_parser(add_help=True).print_help()
            print(f"\nThe commands are listed by the daemon, which is not reachable: {exc}")
            return EXIT_OK
        print(f"aigwctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandFailed as exc:
        print(f"aigwctl: the daemon refused the command list: {exc.status}: {safe(exc.detail)}", file=sys.stderr)
        return EXIT_FAILED
    try:
        ns = command_parser(specs).parse_args(list(words))
    except SystemExit as exc:  # argparse: 0 after --help, 2 after a usage error
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    spec = specs[ns._spec]
    args: dict[str, Any] = values(spec, ns)
    for arg in spec.secrets():
        try:
            args[arg.name] = await asyncio.to_thread(read_secret, arg.name)
        except ValueError as exc:
            print(f"aigwctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not args[arg.name]:
            print(f"aigwctl: {spec.name}: an empty {arg.name} is not accepted", file=sys.stderr)
            return EXIT_USAGE
    try:
        if spec.stream:
            async for item in client.stream(spec, args):
                print(json.dumps(item) if as_json else render.log_line(item), flush=True)
            return EXIT_OK
        reply = await client.call(spec, args)
    except Unreachable as exc:
        print(f"aigwctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandFailed as exc:
        print(f"aigwctl: {spec.name}: {exc.status}: {safe(exc.detail)}", file=sys.stderr)
        return EXIT_FAILED
    if not reply.ok:
        print(f"aigwctl: {spec.name}: {reply.status}: {safe(reply.detail)}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(reply.body, indent=2) if as_json else render.render(spec.name, reply.body))
    hint = render.more(reply.next_cursor)
    if hint:
        print(hint, file=sys.stderr)  # stdout stays the answer alone, for scripts
    return EXIT_OK


async def _run(opts: argparse.Namespace, words: list[str]) -> int:
    client: Client = HttpClient(opts.url, opts.token) if opts.url else SocketClient(opts.socket)
    try:
        if not words:
            return await Shell(client, json_output=opts.json).run()
        return await one_shot(client, opts.json, words)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    opts, words = global_parser(add_help=False).parse_known_args(sys.argv[1:] if argv is None else argv)
    if opts.url and not opts.token:
        print("aigwctl: --url needs --token (or AIGW_TOKEN): an admin access token from /auth/token",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(opts, words))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
