"""Secrets on disk: the cluster key and users' tokens, in files only their owner can read.

Shared by the host (which creates them), the runners (the cluster key) and the client (a
token). Only `os` at import: the client reads its token on every start.

A token is `<id>.<secret>`: the host looks a token up by its id and compares the hash of its
secret in constant time, so it never stores a secret and a lookup leaks nothing about one.
"""

from __future__ import annotations

import os

#: bytes of randomness in a cluster key and in a token's secret (256 bits; SPEC asks for >= 128)
SECRET_BYTES = 32


class CredentialError(Exception):
    """A secret file is missing, unreadable or empty: the message says which and what to do."""


def read_secret(path: str, what: str) -> str:
    """The secret in `path` (surrounding whitespace dropped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except FileNotFoundError:
        raise CredentialError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"cannot read the {what} at {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise CredentialError(f"the {what} file {path} is empty")
    return value


def write_secret(path: str, value: str) -> None:
    """Write `value` to `path` with mode 0600 (its folder made 0700 if missing), replacing it at once."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    temp = f"{path}.{os.getpid()}.new"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, value.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        os.unlink(temp)
        raise


def new_secret() -> str:
    import secrets

    return secrets.token_urlsafe(SECRET_BYTES)


def new_token() -> tuple[str, str]:
    """(its id, the token to hand out)."""
    import secrets

    token_id = secrets.token_hex(8)
    return token_id, f"{token_id}.{new_secret()}"


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    token_id, dot, secret = token.partition(".")
    if not dot or len(token_id) != 16 or not secret or len(token) > 256:
        return None
    return token_id, secret


def hash_secret(secret: str) -> str:
    """What the host stores of a token. A plain SHA-256 is enough: the secret is 256 random
    bits, so there is nothing to guess that a slow hash would protect."""
    import hashlib

    return hashlib.sha256(secret.encode()).hexdigest()


def own_name() -> str:
    """This process's login name, from its uid (not $USER or $LOGNAME, which `su` may leave behind)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (e.g. in a container): the number is all there is
        return str(os.geteuid())
