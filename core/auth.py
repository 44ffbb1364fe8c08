"""App users: bcrypt passwords, roles, login with lockout, and the first admin; API tokens.

The logic lives here rather than in the Streamlit app so that the CLI and the stack
start (`ensure_admin`) use exactly the same rules. Every change to a user and every
failed login is written to the audit log; no password, hash or typed-in user name of
an unknown account is ever stored there (a user name field often receives a
password by mistake).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import bcrypt
from sqlalchemy import Connection, select, text

from core.db import app_users
from core.recorder import audit
from core.settings import Settings
from core.states import AuditSource, Role

ROLES: tuple[Role, ...] = tuple(Role)  # in increasing order of what they grant
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

BCRYPT_ROUNDS = 12
# bcrypt only looks at the first 72 bytes; bcrypt 5 refuses longer input outright.
PASSWORD_MAX_BYTES = 72
PASSWORD_MIN_CHARS = 12
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")  # \Z: "$" would let a final newline in

# After LOCKOUT_THRESHOLD consecutive failures the account is locked for
# LOCKOUT_BASE_S, doubling with each further failure up to LOCKOUT_MAX_S.
LOCKOUT_THRESHOLD = 5
LOCKOUT_BASE_S = 30
LOCKOUT_MAX_S = 15 * 60


class UserError(ValueError):
    """A user change was refused; the message says why, for display to the admin."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class LoginResult:
    """Outcome of a login attempt; `message` is safe to show on the login form."""

    user: User | None
    message: str
    locked_until: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.user is not None


def role_at_least(role: str | None, minimum: str) -> bool:
    """True when `role` grants at least what `minimum` grants (viewer < operator < admin)."""
    return role in ROLE_RANK and ROLE_RANK[role] >= ROLE_RANK[minimum]


def check_username(username: str) -> str:
    if not USERNAME_RE.match(username or ""):
        raise UserError("a user name has 1-64 letters, digits, '.', '_' or '-'")
    return username


def check_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise UserError(f"the role must be one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < PASSWORD_MIN_CHARS:
        raise UserError(f"a password has at least {PASSWORD_MIN_CHARS} characters")
    if len(password.encode("utf-8")) > PASSWORD_MAX_BYTES:
        raise UserError(f"a password has at most {PASSWORD_MAX_BYTES} bytes (bcrypt ignores the rest)")
    return password


def generate_password() -> str:
    """A random password of 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(18)


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    check_password(password)
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """Constant-time bcrypt check; over-long or malformed input is simply wrong."""
    raw = password.encode("utf-8")
    if len(raw) > PASSWORD_MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, password_hash.encode("ascii"))
    except ValueError:
        return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to check against for unknown users, so that timing does not reveal them."""
    return bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def lockout_delay(failed_logins: int) -> timedelta | None:
    """How long an account with this many consecutive failures stays locked."""
    if failed_logins < LOCKOUT_THRESHOLD:
        return None
    seconds = min(LOCKOUT_BASE_S * 2 ** (failed_logins - LOCKOUT_THRESHOLD), LOCKOUT_MAX_S)
    return timedelta(seconds=seconds)


_USER_COLUMNS = [app_users.c[name] for name in User.__dataclass_fields__]


def _user(row: object) -> User:
    return User(**{k: getattr(row, k) for k in User.__dataclass_fields__})


def get_user(conn: Connection, username: str) -> User | None:
    row = conn.execute(select(*_USER_COLUMNS).where(app_users.c.username == username)).first()
    return _user(row) if row else None


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(select(*_USER_COLUMNS).order_by(app_users.c.username)).all()
    return [_user(r) for r in rows]


def _admin_count(conn: Connection) -> int:
    return conn.execute(text("SELECT count(*) FROM app_users WHERE role = :admin"), {"admin": Role.ADMIN}).scalar_one()


def create_user(
    conn: Connection, username: str, password: str, role: str, *, actor: str, source: str,
    rounds: int = BCRYPT_ROUNDS,
) -> User:
    """Create a user; raises UserError for a bad name, role or password, or a duplicate."""
    check_username(username)
    check_role(role)
    password_hash = hash_password(password, rounds)
    created = conn.execute(
        text(
            "INSERT INTO app_users (username, password_hash, role) VALUES (:u, :h, :r) "
            "ON CONFLICT (username) DO NOTHING RETURNING username"
        ),
        {"u": username, "h": password_hash, "r": role},
    ).first()
    if created is None:
        raise UserError(f"user {username!r} already exists")
    audit(conn, actor=actor, source=source, action="user.create", target=f"user:{username}", after={"role": role})
    user = get_user(conn, username)
    assert user is not None
    return user


def _locked_user(conn: Connection, username: str) -> User:
    row = conn.execute(select(*_USER_COLUMNS).where(app_users.c.username == username).with_for_update()).first()
    if row is None:
        raise UserError(f"user {username!r} does not exist")
    return _user(row)


def set_role(conn: Connection, username: str, role: str, *, actor: str, source: str) -> None:
    """Change a role; the last admin cannot be demoted (nobody could manage users then)."""
    check_role(role)
    user = _locked_user(conn, username)
    if user.role == role:
        return
    if user.role == Role.ADMIN and _admin_count(conn) <= 1:
        raise UserError("the last admin cannot be demoted; promote another user first")
    conn.execute(text("UPDATE app_users SET role = :r WHERE username = :u"), {"u": username, "r": role})
    audit(conn, actor=actor, source=source, action="user.role", target=f"user:{username}",
          before={"role": user.role}, after={"role": role})


def set_password(
    conn: Connection, username: str, password: str, *, actor: str, source: str, keep_session: str | None = None,
    rounds: int = BCRYPT_ROUNDS, now: datetime | None = None,
) -> int:
    """Set a new password, lift any lockout, and end every session of the user but `keep_session`.

    A password is changed or reset because the old one may be known to someone else, so a
    session opened with it (a stolen cookie, a forgotten browser) must not outlive it.
    `keep_session` is the caller's own raw session id: a user changing their own password
    stays logged in where they are (another user's session is never kept). Returns how
    many sessions ended; the audit entry says so and holds no password.
    """
    now = now or datetime.now(UTC)
    password_hash = hash_password(password, rounds)
    _locked_user(conn, username)
    conn.execute(
        text("UPDATE app_users SET password_hash = :h, failed_logins = 0, locked_until = NULL WHERE username = :u"),
        {"u": username, "h": password_hash},
    )
    keep = _session_hash(keep_session) if keep_session else ""
    ended = len(conn.execute(
        text("UPDATE app_sessions SET revoked_at = :now WHERE username = :u AND revoked_at IS NULL "
             "AND expires_at > :now AND id_hash <> :keep RETURNING id_hash"),
        {"u": username, "now": now, "keep": keep},
    ).all())
    audit(conn, actor=actor, source=source, action="user.password", target=f"user:{username}",
          after={"sessions_ended": ended})
    return ended


def unlock_user(conn: Connection, username: str, *, actor: str, source: str) -> None:
    user = _locked_user(conn, username)
    conn.execute(
        text("UPDATE app_users SET failed_logins = 0, locked_until = NULL WHERE username = :u"), {"u": username}
    )
    audit(conn, actor=actor, source=source, action="user.unlock", target=f"user:{username}",
          before={"failed_logins": user.failed_logins, "locked_until": user.locked_until})


def delete_user(conn: Connection, username: str, *, actor: str, source: str) -> None:
    user = _locked_user(conn, username)
    if username == actor:
        raise UserError("you cannot delete your own account")
    if user.role == Role.ADMIN and _admin_count(conn) <= 1:
        raise UserError("the last admin cannot be deleted")
    conn.execute(text("DELETE FROM app_users WHERE username = :u"), {"u": username})
    audit(conn, actor=actor, source=source, action="user.delete", target=f"user:{username}",
          before={"role": user.role})


def ensure_admin(conn: Connection, settings: Settings) -> bool:
    """Create the first admin from APP_ADMIN_USERNAME / APP_ADMIN_PASSWORD when absent.

    An existing account is left alone (its password may have been changed in the
    app since setup). Returns True when the account was created now.
    """
    if get_user(conn, settings.app_admin_username) is not None:
        return False
    try:
        create_user(conn, settings.app_admin_username, settings.app_admin_password.get_secret_value(), Role.ADMIN,
                    actor="setup", source=AuditSource.SETUP)
    except UserError as exc:
        if "already exists" in str(exc):  # created concurrently by another starter
            return False
        raise
    return True


def authenticate(
    conn: Connection, username: str, password: str, *, source: str = AuditSource.UI, now: datetime | None = None
) -> LoginResult:
    """Check a login, counting failures and locking the account after repeated ones.

    The caller commits the transaction whatever the outcome: failed attempts must be
    counted and audited. The messages do not say whether an account exists.
    """
    now = now or datetime.now(UTC)
    denied = "Wrong user name or password."
    row = None
    if USERNAME_RE.match(username or ""):
        row = conn.execute(
            select(*_USER_COLUMNS, app_users.c.password_hash)
            .where(app_users.c.username == username).with_for_update()
        ).first()
    if row is None:
        verify_password(password, _dummy_hash())
        audit(conn, actor="anonymous", source=source, action="auth.login_failed", target=None,
              after={"reason": "unknown user"})
        return LoginResult(None, denied)
    user = _user(row)
    if user.locked_until is not None and user.locked_until > now:
        audit(conn, actor=username, source=source, action="auth.login_failed", target=f"user:{username}",
              after={"reason": "locked", "locked_until": user.locked_until})
        return LoginResult(None, _locked_message(user.locked_until, now), user.locked_until)
    if not verify_password(password, row.password_hash):
        failed = user.failed_logins + 1
        delay = lockout_delay(failed)
        locked_until = now + delay if delay else None
        conn.execute(
            text("UPDATE app_users SET failed_logins = :n, locked_until = :until WHERE username = :u"),
            {"u": username, "n": failed, "until": locked_until},
        )
        audit(conn, actor=username, source=source, action="auth.login_failed", target=f"user:{username}",
              after={"reason": "wrong password", "failed_logins": failed, "locked_until": locked_until})
        if locked_until:
            return LoginResult(None, _locked_message(locked_until, now), locked_until)
        return LoginResult(None, denied)
    conn.execute(
        text("UPDATE app_users SET failed_logins = 0, locked_until = NULL, last_login_at = :now WHERE username = :u"),
        {"u": username, "now": now},
    )
    audit(conn, actor=username, source=source, action="auth.login", target=f"user:{username}")
    return LoginResult(get_user(conn, username), "")


def _locked_message(until: datetime, now: datetime) -> str:
    seconds = max(1, int((until - now).total_seconds() + 0.999))
    return f"Too many failed logins: this account is locked. Try again in {seconds} s."


# --- API tokens (the workflow API on ROUTING_API_PORT, api/) ------------------------------
#
# api_tokens is owned by this module, like app_users. A token is shown once, when it is
# created; the table keeps only its SHA-256 (a token is 256 random bits, so a fast hash is
# enough: there is nothing to guess). Creating and revoking a token are audited; using one
# is not (a monitoring script polling every few seconds would flood the audit log): its
# last_used_at is kept instead, written at most once a TOKEN_TOUCH_S per token. What a
# token's holder changes through the API is audited by core/operations.py with the
# token's name as the actor and the source AuditSource.API.

TOKEN_PREFIX = "hub_"
TOKEN_MAX_CHARS = 256  # a presented token longer than this is refused unread
TOKEN_TOUCH_S = 60


class TokenError(ValueError):
    """A token change was refused; the message says why, for display to the admin."""


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """"active", "revoked" or "expired" (revoked wins: it was a decision)."""
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class TokenCheck:
    """Outcome of presenting a token; `problem` is safe to send back to the client."""

    token: ApiToken | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.token is not None


_TOKEN_COLUMNS = ", ".join(ApiToken.__dataclass_fields__)


def _api_token(row: object) -> ApiToken:
    return ApiToken(**{k: getattr(row, k) for k in ApiToken.__dataclass_fields__})


def hash_token(raw: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def check_token_name(name: str) -> str:
    if not USERNAME_RE.match(name or ""):
        raise TokenError("a token name has 1-64 letters, digits, '.', '_' or '-'")
    return name


def get_token(conn: Connection, name: str) -> ApiToken | None:
    row = conn.execute(text(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE name = :n"), {"n": name}).first()  # noqa: S608
    return _api_token(row) if row else None


def list_tokens(conn: Connection) -> list[ApiToken]:
    rows = conn.execute(text(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY name")).all()  # noqa: S608
    return [_api_token(r) for r in rows]


def create_token(
    conn: Connection, name: str, role: str, *, actor: str, source: str, expires_at: datetime | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns it and the raw token, which exists nowhere else afterwards.

    Raises TokenError for a bad name or role, an expiry in the past, or a duplicate name.
    """
    check_token_name(name)
    if role not in ROLE_RANK:
        raise TokenError(f"the role must be one of {', '.join(ROLES)}")
    now = now or datetime.now(UTC)
    if expires_at is not None and expires_at <= now:
        raise TokenError("the expiry must be in the future")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    insert = ("INSERT INTO api_tokens (name, token_hash, role, created_by, created_at, expires_at) "
              "VALUES (:n, :h, :r, :by, :at, :exp) ON CONFLICT (name) DO NOTHING RETURNING ")
    row = conn.execute(
        text(insert + _TOKEN_COLUMNS),  # constant column list; every value is bound
        {"n": name, "h": hash_token(raw), "r": role, "by": actor, "at": now, "exp": expires_at},
    ).first()
    if row is None:
        raise TokenError(f"a token named {name!r} already exists (revoked ones keep their name)")
    audit(conn, actor=actor, source=source, action="token.create", target=f"token:{name}",
          after={"role": role, "expires_at": expires_at})
    return _api_token(row), raw


def revoke_token(conn: Connection, name: str, *, actor: str, source: str, now: datetime | None = None) -> ApiToken:
    """Revoke a token for good: the next request with it is refused (401)."""
    now = now or datetime.now(UTC)
    row = conn.execute(
        text(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE name = :n FOR UPDATE"), {"n": name}  # noqa: S608
    ).first()
    if row is None:
        raise TokenError(f"token {name!r} does not exist")
    token = _api_token(row)
    if token.revoked_at is not None:
        raise TokenError(f"token {name!r} is already revoked")
    conn.execute(text("UPDATE api_tokens SET revoked_at = :now WHERE id = :id"), {"id": token.id, "now": now})
    audit(conn, actor=actor, source=source, action="token.revoke", target=f"token:{name}",
          before={"role": token.role, "expires_at": token.expires_at, "last_used_at": token.last_used_at},
          after={"revoked_at": now})
    return ApiToken(**{**token.__dict__, "revoked_at": now})


def verify_token(conn: Connection, raw: str, *, now: datetime | None = None) -> TokenCheck:
    """Check a presented token and note its use (last_used_at); the caller commits.

    The row is found by the token's SHA-256 (a unique index) and the stored hash is then
    compared in constant time. A revoked or expired token is refused with a message that
    says so (only its holder can learn that it existed).
    """
    now = now or datetime.now(UTC)
    if not raw or len(raw) > TOKEN_MAX_CHARS or not raw.isascii():
        return TokenCheck(None, "invalid token")
    digest = hash_token(raw)
    row = conn.execute(
        text(f"SELECT {_TOKEN_COLUMNS}, token_hash FROM api_tokens WHERE token_hash = :h"), {"h": digest}  # noqa: S608
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash.encode("ascii"), digest.encode("ascii")):
        return TokenCheck(None, "invalid token")
    token = _api_token(row)
    state = token.state(now)
    if state != "active":
        return TokenCheck(None, f"this token is {state}")
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= TOKEN_TOUCH_S:
        conn.execute(
            text("UPDATE api_tokens SET last_used_at = :now WHERE id = :id "
                 "AND (last_used_at IS NULL OR last_used_at < :now)"),
            {"id": token.id, "now": now},
        )
    return TokenCheck(token)


# --- app sessions (the operations app's login cookie, app/auth_routes.py) -----------------
#
# app_sessions is owned by this module, like app_users. A session id is 256 random bits,
# handed to the browser once (in an HttpOnly cookie) and stored only as its SHA-256, so a
# copy of the table opens no session. A session ends at the first of: its expiry
# (APP_SESSION_TTL after login), APP_IDLE_TIMEOUT without a request that counts as
# activity, end_session (logout), the account being deleted (ON DELETE CASCADE) or locked.
# The OHIF gateway calls the same three functions.

# The cookie holding the raw session id. Browsers send a host's cookies to every port of it, so
# the app (OPERATOR_UI_PORT) and the OHIF gateway (OHIF_PORT, viewer/) share one login.
SESSION_COOKIE = "hub_session"
SESSION_ID_MAX_CHARS = 128  # a presented id longer than this is refused unread
_SESSION_PURGE_AFTER = timedelta(days=1)  # ended sessions are deleted this long after they ended
_SESSION_USER_COLUMNS = ", ".join(f"u.{name}" for name in User.__dataclass_fields__)  # constant list


def _session_hash(raw_id: str) -> str:
    return hashlib.sha256(raw_id.encode("utf-8")).hexdigest()


def start_session(conn: Connection, username: str, *, ttl_s: float, now: datetime | None = None) -> str:
    """Open a session for `username` (whose password was just verified); returns the raw id.

    The raw id exists only in the caller's hands afterwards (the cookie); the table keeps
    its SHA-256. Sessions that ended more than a day ago are deleted on the way.
    """
    now = now or datetime.now(UTC)
    raw = secrets.token_urlsafe(32)
    conn.execute(
        text("DELETE FROM app_sessions WHERE expires_at < :cut OR revoked_at < :cut"),
        {"cut": now - _SESSION_PURGE_AFTER},
    )
    conn.execute(
        text("INSERT INTO app_sessions (id_hash, username, created_at, last_seen_at, expires_at) "
             "VALUES (:h, :u, :now, :now, :exp)"),
        {"h": _session_hash(raw), "u": username, "now": now, "exp": now + timedelta(seconds=ttl_s)},
    )
    return raw


def session_user(
    conn: Connection, raw_id: str | None, *, idle_timeout_s: float, touch: bool = True, now: datetime | None = None,
) -> User | None:
    """The user of a live session, or None (unknown, expired, idle too long, ended, user gone or locked).

    A live session's last_seen_at is set to now (the caller commits), unless `touch` is
    False: a page refreshing itself is not the user's activity and must not keep an
    unattended session alive. The role is the account's current one.
    """
    now = now or datetime.now(UTC)
    if not raw_id or len(raw_id) > SESSION_ID_MAX_CHARS or not raw_id.isascii():
        return None
    digest = _session_hash(raw_id)
    row = conn.execute(
        text(f"SELECT {_SESSION_USER_COLUMNS}, s.id_hash, s.expires_at, s.revoked_at, s.last_seen_at "  # noqa: S608
             "FROM app_sessions s JOIN app_users u ON u.username = s.username WHERE s.id_hash = :h"),
        {"h": digest},
    ).first()
    if row is None or not hmac.compare_digest(row.id_hash.encode("ascii"), digest.encode("ascii")):
        return None
    if row.revoked_at is not None or row.expires_at <= now:
        return None
    if (now - row.last_seen_at).total_seconds() > idle_timeout_s:
        return None
    user = _user(row)
    if user.locked_until is not None and user.locked_until > now:
        return None
    if touch:
        conn.execute(
            text("UPDATE app_sessions SET last_seen_at = :now WHERE id_hash = :h AND last_seen_at < :now"),
            {"h": digest, "now": now},
        )
    return user


def end_session(conn: Connection, raw_id: str | None, *, now: datetime | None = None) -> str | None:
    """End a session (logout); returns its user name when a live session ended, else None."""
    if not raw_id or len(raw_id) > SESSION_ID_MAX_CHARS or not raw_id.isascii():
        return None
    row = conn.execute(
        text("UPDATE app_sessions SET revoked_at = :now WHERE id_hash = :h AND revoked_at IS NULL "
             "RETURNING username"),
        {"h": _session_hash(raw_id), "now": now or datetime.now(UTC)},
    ).first()
    return row.username if row else None
