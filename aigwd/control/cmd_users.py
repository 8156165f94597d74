"""Commands about users and their tokens."""

from __future__ import annotations

from typing import Any

from ..bounds import MAX_USERNAME
from ..config import ROLES
from ..errors import not_found
from . import paging
from .registry import Arg, Command, Context, Result

NAME = Arg("name", "user name", required=True, positional=True, complete="user", max_length=MAX_USERNAME)
PASSWORD = Arg("password", "the new password (aigwctl asks for it)", required=True, secret=True)


async def users_list(ctx: Context, args: dict[str, Any]) -> Result:
    after = paging.decode("users", args["cursor"], (str,))
    rows = [u for u in await ctx.plane.accounts.list() if after is None or u["name"] > after[0]]  # by name
    rows, cursor = paging.page("users", rows, args["limit"], lambda u: (u["name"],))
    return Result(rows, next_cursor=cursor)


async def users_add(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.accounts.add(args["name"], args["role"], args["password"]), 201)


async def users_passwd(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.accounts.set_password(args["name"], args["password"]))


async def users_del(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.accounts.delete(args["name"]))


async def users_disable(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.accounts.set_disabled(args["name"], True))


async def users_enable(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.accounts.set_disabled(args["name"], False))


async def tokens_revoke(ctx: Context, args: dict[str, Any]) -> Result:
    user = args["user"]
    # A deleted user's tokens may still be revoked; an unknown name with nothing to revoke is a typo.
    revoked = await ctx.services.tokens.revoke_subject(user)
    if revoked == 0 and ctx.services.users.get(user) is None:
        raise not_found(f"user {user} does not exist and holds no tokens")
    return Result({"status": "revoked", "user": user, "revoked_families": revoked,
                   "message": f"revoked {revoked} token famil{'y' if revoked == 1 else 'ies'} of {user}"})


COMMANDS = (
    Command("users list", "every user: name, role, where it is defined, disabled (never hashes)", users_list,
            paging.ARGS, path="/admin/users", paged=True),
    Command("users add", "add a user (kept in the state database)", users_add, (
        Arg("name", "user name", required=True, positional=True, max_length=MAX_USERNAME),
        Arg("role", "admin or user", choices=ROLES, default="user"), PASSWORD),
        method="POST", path="/admin/users", mutates=True),
    Command("users passwd", "set a user's password; their tokens are revoked", users_passwd, (NAME, PASSWORD),
            method="POST", path="/admin/users/{name}/password", mutates=True),
    Command("users del", "delete a user added at run time; their tokens stop working at once", users_del,
            (NAME,), method="DELETE", path="/admin/users/{name}", mutates=True),
    Command("users disable", "refuse a user's logins and tokens until enabled again", users_disable, (NAME,),
            method="POST", path="/admin/users/{name}/disable", mutates=True),
    Command("users enable", "allow a disabled user again", users_enable, (NAME,),
            method="POST", path="/admin/users/{name}/enable", mutates=True),
    Command("tokens revoke", "revoke every access and refresh token of a user", tokens_revoke, (
        Arg("user", "user name", required=True, positional=True, complete="user", max_length=MAX_USERNAME),),
        method="POST", path="/admin/tokens/{user}/revoke", mutates=True),
)
