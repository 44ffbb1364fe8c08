"""Send intents, worker liveness locks, automatic outage holds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

* `routing_jobs.send_intent_at`: written (and committed) just before the worker asks
  Orthanc to store a batch, cleared once the Orthanc job id is recorded or the attempt
  is settled. A job adopted with an intent but no Orthanc job id may already be under
  way in Orthanc; the adopter looks for that store job before it may send again
  (worker/dispatcher.py, docs/architecture.md "Exactly once").
* `worker_heartbeats.lock_key`: each worker holds a session-level advisory lock
  (LIVENESS_LOCK_NS, lock_key) for its whole life. PostgreSQL frees it the moment the
  worker's connection dies, so a killed worker's jobs are adopted at once instead of
  after heartbeat staleness.
* `destination_holds.kind`: `operator` (put by a person, released by a person) or
  `outage` (put by the worker when the destination stops answering C-ECHO, probed
  with backoff and released by the worker when it answers). Jobs of a held
  destination wait without spending attempts.
* `destination_outages`: one row per automatic outage, open while `ended_at` is NULL:
  the history an operator (and the alerting of issue 18) reads.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE routing_jobs ADD COLUMN send_intent_at timestamptz;
        ALTER TABLE worker_heartbeats ADD COLUMN lock_key integer;
        ALTER TABLE destination_holds
            ADD COLUMN kind text NOT NULL DEFAULT 'operator' CHECK (kind IN ('operator', 'outage')),
            ADD COLUMN probe_failures integer NOT NULL DEFAULT 0,
            ADD COLUMN last_probe_at timestamptz,
            ADD COLUMN next_probe_at timestamptz,
            ADD COLUMN last_error text;
        CREATE TABLE destination_outages (
            id          bigserial PRIMARY KEY,
            destination text NOT NULL,
            started_at  timestamptz NOT NULL,
            ended_at    timestamptz,
            probes      integer NOT NULL DEFAULT 0,
            first_error text,
            last_error  text
        );
        CREATE UNIQUE INDEX destination_outages_open_idx ON destination_outages (destination)
            WHERE ended_at IS NULL;
        CREATE INDEX destination_outages_started_idx ON destination_outages (started_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE destination_outages;
        DELETE FROM destination_holds WHERE kind = 'outage';
        ALTER TABLE destination_holds DROP COLUMN kind, DROP COLUMN probe_failures, DROP COLUMN last_probe_at,
            DROP COLUMN next_probe_at, DROP COLUMN last_error;
        ALTER TABLE worker_heartbeats DROP COLUMN lock_key;
        ALTER TABLE routing_jobs DROP COLUMN send_intent_at;
        """
    )
