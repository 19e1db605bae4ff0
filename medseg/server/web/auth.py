"""Who may use the web side, and proof that a POST came from our own page.

- Authentication (when ``[web]`` has tokens or users; required beyond loopback):
  ``Authorization: Bearer TOKEN`` (its SHA-256 among ``tokens_sha256``: Prometheus and
  scripts) or HTTP Basic with a user's password (a browser asks for it). A password check
  costs a PBKDF2 run; credentials already verified are remembered by their SHA-256 (never
  the password itself) so that a dashboard refreshing every few seconds does not pay it
  again.
- CSRF: every POST must carry the page's token (header ``X-CSRF-Token`` or form field
  ``csrf``), an HMAC of the user under a key made at start, which another site's page
  cannot read; a POST whose ``Origin`` is another site is refused too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from medseg.server.config import WebConfig
from medseg.server.web.passwords import check_password

ANONYMOUS = "-"  # the user name of requests on an unauthenticated (loopback) web side
_REMEMBERED = 256


@dataclass(frozen=True)
class Identity:
    """Who made a request: a user name, ``token`` for a bearer token, or ``ANONYMOUS``."""

    name: str


class Authenticator:
    """Checks the ``Authorization`` header against ``[web]``; makes and checks CSRF tokens."""

    def __init__(self, config: WebConfig) -> None:
        self.required = config.authenticated
        self._tokens = tuple(bytes.fromhex(t) for t in config.tokens_sha256)
        self._users = dict(user.split(":", 1) for user in config.users)
        self._key = os.urandom(32)
        self._verified: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def identify(self, authorization: str) -> Identity | None:
        """The request's identity, or None when it must be refused (401)."""
        if not self.required:
            return Identity(ANONYMOUS)
        kind, _, value = authorization.strip().partition(" ")
        kind = kind.lower()
        if kind == "bearer" and value:
            digest = hashlib.sha256(value.strip().encode()).digest()
            if any(hmac.compare_digest(digest, t) for t in self._tokens):
                return Identity("token")
            return None
        if kind == "basic" and value:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return self._basic(user, password)
        return None

    def _basic(self, user: str, password: str) -> Identity | None:
        stored = self._users.get(user)
        if stored is None:
            return None
        key = hashlib.sha256(f"{user}\0{password}\0{stored}".encode()).digest()
        with self._lock:
            if key in self._verified:
                return Identity(user)
        if not check_password(password, stored):
            return None
        with self._lock:
            if len(self._verified) >= _REMEMBERED:
                self._verified.clear()
            self._verified[key] = user
        return Identity(user)

    def csrf_token(self, identity: Identity) -> str:
        return hmac.new(self._key, identity.name.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, identity: Identity, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented, self.csrf_token(identity))
