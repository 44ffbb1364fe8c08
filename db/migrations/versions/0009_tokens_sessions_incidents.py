"""API tokens, app sessions and alert incidents.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- api_tokens: bearer tokens for the workflow API (:8044), created and revoked by an
  admin in the app. Only a SHA-256 of the token is stored; the token is shown once.
  Owned by core/auth.py, like app_users.
- app_sessions: the app's login sessions, so a reload keeps the user logged in. The
  browser holds a random session id in an HttpOnly cookie; only its SHA-256 is stored.
  Owned by core/auth.py.
- incidents and alert_deliveries: one row per incident the worker's alerter opens
  (a dead job, an overdue AI result, an outage, low disk, ...), and one per message sent
  about it on a channel. Written by core/recorder.py.
- audit_log.source gains 'api' and 'viewer' (the workflow API and the OHIF gateway).
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
-- --- api tokens (core/auth.py) ---
CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    token_hash    text NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

-- --- app sessions (core/auth.py) ---
CREATE TABLE app_sessions (
    id_hash       text PRIMARY KEY,
    username      text NOT NULL REFERENCES app_users (username) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX app_sessions_username_idx ON app_sessions (username);

-- --- incidents and alerts (core/recorder.py) ---
CREATE TABLE incidents (
    id             bigserial PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('job_dead', 'ai_overdue', 'destination_outage', 'disk_low',
                                                 'no_live_worker', 'orthanc_unreachable', 'database_unreachable',
                                                 'rules_refused', 'sender_rejected', 'test')),
    key            text NOT NULL,
    opened_at      timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL,
    resolved_at    timestamptz,
    occurrences    integer NOT NULL DEFAULT 1,
    summary        text NOT NULL,
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_notified_at timestamptz
);
-- At most one open incident per kind and key: a burst folds into it.
CREATE UNIQUE INDEX incidents_open_idx ON incidents (kind, key) WHERE resolved_at IS NULL;
CREATE INDEX incidents_opened_idx ON incidents (opened_at DESC);

CREATE TABLE alert_deliveries (
    id           bigserial PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    channel      text NOT NULL CHECK (channel IN ('webhook', 'email')),
    message      text NOT NULL CHECK (message IN ('open', 'repeat', 'resolve', 'test')),
    attempt      integer NOT NULL DEFAULT 1,
    at           timestamptz NOT NULL,
    ok           boolean NOT NULL,
    error        text
);
CREATE INDEX alert_deliveries_incident_idx ON alert_deliveries (incident_id, at DESC);

-- --- audit sources ---
ALTER TABLE audit_log DROP CONSTRAINT audit_log_source_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_source_check
    CHECK (source IN ('ui', 'cli', 'worker', 'setup', 'api', 'viewer'));
"""

DOWNGRADE = """
DELETE FROM audit_log WHERE source IN ('api', 'viewer');
ALTER TABLE audit_log DROP CONSTRAINT audit_log_source_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_source_check CHECK (source IN ('ui', 'cli', 'worker', 'setup'));
DROP TABLE alert_deliveries, incidents, app_sessions, api_tokens;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
