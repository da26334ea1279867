"""`hakuriver.host --add-user NAME [--admin]`, `--list-users`, `--remove-user NAME`.

They work on the host's database directly, whether or not the host is running: a running host
reads users at every request, so a removed user's token stops working at once.
"""

from __future__ import annotations

import re
import sys
import time

from hakuriver import credentials
from hakuriver.host.store import Store, UserExists, UserRecord

#: a user's name is also the Unix account its tasks run as: the same characters (useradd's rule)
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


class UserError(Exception):
    pass


def add_user(store: Store, name: str, admin: bool) -> str:
    """Make the user; its token (shown once, stored only as a hash)."""
    if not USER_NAME.fullmatch(name):
        raise UserError(f"invalid user name {name!r}: use letters, digits, '_', '.' or '-' (a Unix login name), "
                        "at most 32 characters, not starting with a digit or '-'")
    token_id, token = credentials.new_token()
    _, secret = token.split(".", 1)
    try:
        store.add_user(UserRecord(name, admin, token_id, credentials.hash_secret(secret), time.time()))
    except UserExists:
        raise UserError(f"user {name} already exists; --remove-user {name} first to give them a new token") from None
    return token


def remove_user(store: Store, name: str) -> None:
    if not store.remove_user(name):
        raise UserError(f"no user named {name} (see --list-users)")


def print_users(store: Store) -> None:
    users = store.users()
    width = max([4, *(len(u.name) for u in users)])
    print(f"{'NAME':<{width}}  ROLE   CREATED")
    for u in users:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(u.created_at))
        print(f"{u.name:<{width}}  {'admin' if u.admin else 'user':<5}  {created}")
    if not users:
        print("(no users: the host makes its first admin when it starts)", file=sys.stderr)
