"""Core schema: studies, series, events, routing jobs, worker state, audit, users.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE studies (
    id               bigserial PRIMARY KEY,
    study_uid        text NOT NULL UNIQUE,
    orthanc_id       text UNIQUE,
    patient_id       text,
    patient_name     text,
    accession_number text,
    modalities       text,
    description      text,
    study_date       text,
    study_time       text,
    source_aet       text,
    first_received_at timestamptz,
    last_received_at  timestamptz,
    stable_at        timestamptz,
    last_stable_at   timestamptz,
    status           text NOT NULL DEFAULT 'received'
        CHECK (status IN ('received', 'unrouted', 'ai_pending', 'ai_overdue',
                          'delivering', 'delivered', 'failed')),
    orphan_ai_result boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studies_first_received_idx ON studies (first_received_at DESC, id DESC);
CREATE INDEX studies_accession_idx ON studies (accession_number);
CREATE INDEX studies_patient_idx ON studies (patient_id);
CREATE INDEX studies_status_idx ON studies (status, first_received_at DESC);

CREATE TABLE series (
    id               bigserial PRIMARY KEY,
    series_uid       text NOT NULL UNIQUE,
    orthanc_id       text UNIQUE,
    study_id         bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    study_uid        text NOT NULL,
    kind             text NOT NULL DEFAULT 'original' CHECK (kind IN ('original', 'ai_result')),
    linked_by        text CHECK (linked_by IN ('study_uid', 'accession', 'unmatched')),
    sender_aet       text,
    modality         text,
    description      text,
    series_number    text,
    instance_count   integer NOT NULL DEFAULT 0,
    first_received_at timestamptz,
    last_received_at  timestamptz,
    stable_at        timestamptz,
    routed_at        timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_study_idx ON series (study_id);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    study_id    bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    series_id   bigint REFERENCES series (id) ON DELETE CASCADE,
    job_id      bigint,
    type        text NOT NULL CHECK (type IN (
        'received', 'stable', 'rule_matched', 'unrouted', 'ai_sent', 'ai_result_received',
        'ai_result_stable', 'ai_result_unmatched', 'ai_overdue', 'delivery_queued',
        'delivery_started', 'delivered', 'delivery_failed', 'delivery_dead',
        'manual_retry', 'resend', 'cancelled')),
    at          timestamptz NOT NULL,
    destination text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_study_idx ON events (study_id, at);
CREATE INDEX events_type_at_idx ON events (type, at);
CREATE INDEX events_at_idx ON events (at);

CREATE TABLE routing_jobs (
    id               bigserial PRIMARY KEY,
    study_id         bigint NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    purpose          text NOT NULL CHECK (purpose IN ('ai', 'delivery')),
    destination      text NOT NULL,
    rule_name        text,
    payload          text NOT NULL CHECK (payload IN ('study', 'ai_results', 'matched')),
    state            text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'sending', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    orthanc_job_id   text,
    claimed_by       text,
    last_error       text,
    last_error_code  integer,
    instances_sent   integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routing_jobs_due_idx ON routing_jobs (next_attempt_at)
    WHERE state IN ('queued', 'failed');
CREATE INDEX routing_jobs_state_idx ON routing_jobs (state, destination);
CREATE INDEX routing_jobs_study_idx ON routing_jobs (study_id);
CREATE INDEX routing_jobs_finished_idx ON routing_jobs (finished_at);

-- Which series a job carries. The partial unique index is the guarantee that a series
-- is never delivered twice to the same destination, unless an operator asks to resend.
CREATE TABLE job_series (
    job_id      bigint NOT NULL REFERENCES routing_jobs (id) ON DELETE CASCADE,
    series_id   bigint NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    destination text NOT NULL,
    is_resend   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, series_id)
);
CREATE UNIQUE INDEX job_series_once_idx ON job_series (series_id, destination) WHERE NOT is_resend;

-- Destinations an operator has put on hold (for example during a PACS downtime): their
-- jobs stay queued, are not attempted and so do not burn retries, until released.
CREATE TABLE destination_holds (
    destination text PRIMARY KEY,
    held_at     timestamptz NOT NULL DEFAULT now(),
    held_by     text NOT NULL,
    reason      text
);

CREATE TABLE worker_state (
    name        text PRIMARY KEY,
    value       bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE worker_heartbeats (
    worker_id    text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    owns_cursor  boolean NOT NULL DEFAULT false,
    orthanc_ok   boolean,
    cursor_lag   bigint,
    info         jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE config_status (
    name        text PRIMARY KEY,
    loaded_at   timestamptz,
    checksum    text,
    error       text,
    error_at    timestamptz,
    content     jsonb
);

CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    source  text NOT NULL CHECK (source IN ('ui', 'cli', 'worker', 'setup')),
    action  text NOT NULL,
    target  text,
    before  jsonb,
    after   jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at DESC);

CREATE TABLE app_users (
    username        text PRIMARY KEY,
    password_hash   text NOT NULL,
    role            text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    last_login_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
"""

DOWNGRADE = """
DROP TABLE app_users, audit_log, config_status, worker_heartbeats, worker_state, destination_holds,
    job_series, routing_jobs, events, series, studies;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
