"""Password hashes for ``[web] users`` and the check of a presented password.

PBKDF2-HMAC-SHA256 from the standard library (no extra dependency), stored as
``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (base64), so the configuration never holds a plain
password. ``python3 -m medseg.server.web.passwords NAME`` asks for a password and prints
the ``users`` entry.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys

from medseg.server.config import PASSWORD_SCHEME

ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes = b"") -> str:
    """The stored form of ``password``: scheme, iterations, salt and digest."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    encode = base64.b64encode
    return f"{PASSWORD_SCHEME}${iterations}${encode(salt).decode()}${encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison)."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != PASSWORD_SCHEME:
            return False
        expected = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or not args[0]:
        print("usage: python3 -m medseg.server.web.passwords NAME", file=sys.stderr)
        return 3
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 3
    print(f'"{args[0]}:{hash_password(password)}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
