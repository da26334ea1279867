"""Who is asking: the cluster key (runners) and users' tokens (people), checked at every request.

Every route of routes.ROUTES names its access (`public`, `user`, `owner`, `runner`); the
app's guard asks `Authenticator.identify` for the caller and `allowed` whether that caller may
use the route. A missing or wrong credential is a 401, a valid one without the right a 403.
On its first start the host makes what a one-machine cluster needs (`first_start`), so the
quick start costs no extra step.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import time
from dataclasses import dataclass

from hakuriver import credentials
from hakuriver.config import AuthConfig
from hakuriver.credentials import own_name
from hakuriver.host.store import Store, UserRecord

log = logging.getLogger("hakuriver.host")


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    admin: bool = False
    runner: bool = False


RUNNER = Identity("", runner=True)


class Unauthorized(Exception):
    """No credential, or one the host does not know (401)."""


class Forbidden(Exception):
    """A valid credential without the right (403)."""


class Authenticator:
    def __init__(self, store: Store, cluster_key: str, metrics_public: bool = False) -> None:
        self.store = store
        self._cluster_key = cluster_key.encode()
        #: [auth] metrics_public: GET /metrics without a token
        self.metrics_public = metrics_public
        self._refused_at: dict[str, float] = {}

    def refused_runner(self, address: str) -> None:
        """Log a refused runner once per address and minute: it retries every few seconds."""
        now = time.monotonic()
        if now - self._refused_at.get(address, -60.0) < 60.0:
            return
        if len(self._refused_at) > 1000:  # bounded, whoever knocks
            self._refused_at.clear()
        self._refused_at[address] = now
        log.warning("refused a runner at %s: no cluster key, or a wrong one (it must hold the host's "
                    "[auth] cluster_key_file)", address)

    def identify(self, authorization: str | None) -> Identity:
        """The caller of a request with this Authorization header; Unauthorized if none is valid."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("this request needs a token (Authorization: Bearer <token>)")
        presented = presented.strip()
        if hmac.compare_digest(presented.encode(), self._cluster_key):
            return RUNNER
        parts = credentials.split_token(presented)
        user = self.store.user_by_token(parts[0]) if parts else None
        # compared even when no user has this id: a miss costs the same as a wrong secret
        expected = user.token_hash if user else "0" * 64
        if not hmac.compare_digest(credentials.hash_secret(parts[1] if parts else presented), expected) or user is None:
            raise Unauthorized("the host does not know this token (wrong, or its user was removed)")
        return Identity(user.name, admin=user.admin)


def allowed(access: str, who: Identity) -> None:
    """Forbidden unless `who` may use a route of this access; ownership is checked by the caller."""
    if access == "runner" and not who.runner:
        raise Forbidden("this route is for runners, which present the cluster key, not a user's token")
    if access in ("user", "owner", "metrics") and who.runner:
        raise Forbidden("the cluster key is for runners; use a user's token (hakuriver.host --add-user NAME)")


def check_owner(who: Identity, owner: str, what: str, action: str) -> None:
    """Forbidden unless `who` owns it or is an admin. A record without an owner (written before
    owners were recorded) is an admin's only."""
    if who.admin or (owner and owner == who.name):
        return
    whose = f"belongs to {owner}" if owner else "has no recorded owner"
    raise Forbidden(f"{what} {whose}: only {'they or ' if owner else ''}an admin may {action} it")


def first_start(config: AuthConfig, store: Store, now: float | None = None) -> str:
    """The cluster key, made if missing; and, on the first start on this database, the first admin.

    The admin is named after the Unix user running the host, and its token goes to
    `token_file`, where the local client looks. A token already there (the database was
    started afresh) is kept, so that a client configured before still works.
    """
    key = _cluster_key(config.cluster_key_file)
    first = store.meta(FIRST_ADMIN)
    if first is None:  # once per database: an admin removed later stays removed
        _first_admin(config.token_file, store, now or time.time())
    elif not os.path.exists(config.token_file):
        _reissue(first, config.token_file, store)
    return key


def _reissue(name: str, token_file: str, store: Store) -> None:
    """The first admin's token file is gone (deleted, or a new home folder): a new token, there.
    Only the host's own user can have removed that file, and the old token stops working."""
    user = store.user(name)
    if user is None or not user.admin:
        return
    token_id, token = credentials.new_token()
    # the database first: if it cannot be written, the file stays missing and the next start tries again
    store.set_token(name, token_id, credentials.hash_secret(token.split(".", 1)[1]))
    credentials.write_secret(token_file, token)
    log.warning("%s was missing: gave admin %s a new token there (the old one no longer works)", token_file, name)


#: the `meta` key saying the host has made its first admin, and who that was
FIRST_ADMIN = "first_admin"


def _first_admin(token_file: str, store: Store, now: float) -> None:
    name = own_name()
    if store.user(name) is not None:
        log.warning("user %s exists already (made with --add-user before the host's first start): no first "
                    "admin made; give one with --add-user NAME --admin", name)
    else:
        # a token already in the file is kept when this database has no users at all (made afresh
        # while a client kept its token): otherwise it may be a removed user's
        token = _existing_token(token_file) if not store.users() else None
        if token is None:
            _, token = credentials.new_token()
            credentials.write_secret(token_file, token)
        token_id, secret = credentials.split_token(token)  # type: ignore[misc]  # well-formed: checked or made above
        store.add_user(UserRecord(name, True, token_id, credentials.hash_secret(secret), now))
        log.info("first start: made admin %s, token written to %s", name, token_file)
    store.set_meta(FIRST_ADMIN, name)


def _cluster_key(path: str) -> str:
    try:
        key = credentials.read_secret(path, "cluster key")
    except credentials.CredentialError:
        if os.path.exists(path):
            raise
        key = credentials.new_secret()
        credentials.write_secret(path, key)
        log.info("first start: made the cluster key %s (copy it to every runner node)", path)
        return key
    _warn_if_readable(path)
    return key


def _existing_token(path: str) -> str | None:
    try:
        token = credentials.read_secret(path, "token")
    except credentials.CredentialError:
        return None
    if credentials.split_token(token) is None:
        log.warning("%s holds no valid token; writing a new one", path)
        return None
    return token


def _warn_if_readable(path: str) -> None:
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the cluster key %s can be read by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
