"""Who may use the console: argon2 password hashes or bearer tokens from the settings,
server-side sessions with a CSRF token each, and a limit on failed logins.

A session is a random 256-bit id in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` unless
turned off for plain HTTP on loopback); the server keeps what it maps to, so logging out or
restarting ends it. Every state-changing request (login, logout) carries a CSRF token: the
session's own (synchronizer token), or before login a random one in a cookie and the form
(double submit), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ribnode.config.settings import ConsoleSettings, ConsoleUser

#: A hash to verify against for unknown user names, so that a wrong name costs as long as a
#: wrong password (no user enumeration by timing).
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (argon2-cffi's defaults, RFC 9106 low-memory profile)."""
    if len(password) < 8:
        raise ValueError(f"a console password needs at least 8 characters, not {len(password)}")
    return _HASHER.hash(password)


def token_digest(token: str) -> str:
    """The hex sha256 of a bearer token, as ``console.users[].token_sha256`` holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A new bearer token and its sha256 (give out the first, configure the second)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


@dataclass(frozen=True)
class Principal:
    """A logged-in person."""

    name: str
    role: str  # "qa" | "technical"

    @property
    def masked(self) -> bool:
        """Patient identifiers are masked for the technical role."""
        return self.role == "technical"


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Users:
    """The configured users: password and bearer-token checks."""

    def __init__(self, users: list[ConsoleUser]) -> None:
        self._users = {u.name: u for u in users}

    def check_password(self, name: str, password: str) -> Principal | None:
        user = self._users.get(name)
        stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.password_hash is None:
            return None
        return Principal(user.name, user.role)

    def check_token(self, token: str) -> Principal | None:
        digest = token_digest(token)
        for user in self._users.values():
            if user.token_sha256 is not None and hmac.compare_digest(user.token_sha256, digest):
                return Principal(user.name, user.role)
        return None


class Sessions:
    """Server-side sessions (thread safe); ids are 256-bit random."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), time.monotonic() + self.lifetime_s)
        with self._lock:
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens; False when either is missing."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


#: An address may serve several people (a ward's terminal, NAT): it is refused only after this
#: many times the failures one user name is allowed.
HOST_FACTOR = 4


class LoginLimiter:
    """Failed logins counted per user name and per client address over a sliding window; past
    ``max_failures`` for a name (``HOST_FACTOR`` times that for an address) further attempts
    are refused until old failures age out."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.limits = {"user": max_failures, "host": max_failures * HOST_FACTOR}
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def blocked(self, host: str, name: str) -> float:
        """Seconds until ``host`` (or user ``name``) may try again; 0 when it may now."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in (f"host:{host}", f"user:{name}"):
                times = self._recent(key, now)
                if len(times) >= self.limits[key.split(":", 1)[0]]:
                    wait = max(wait, times[0] + self.window_s - now)
        return wait

    def failed(self, host: str, name: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"host:{host}", f"user:{name}"):
                self._recent(key, now).append(now)

    def succeeded(self, host: str, name: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{name}", None)


@dataclass
class Auth:
    """Everything the console's pages need to know who is asking."""

    users: Users
    sessions: Sessions
    limiter: LoginLimiter

    @classmethod
    def from_settings(cls, settings: ConsoleSettings) -> Auth:
        return cls(
            Users(settings.users),
            Sessions(settings.session_s),
            LoginLimiter(settings.login_max_failures, settings.login_window_s),
        )
