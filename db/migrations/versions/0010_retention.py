"""Retention (issue 18 part 2): studies deleted from Orthanc stay in the QI tables, marked purged.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-14

- studies.purged_at: when retention (core/retention.py, run by worker/retention.py or
  `./orthanc retention --run`) deleted the study from Orthanc. The row, its series, jobs
  and events stay, so every QI figure survives; the app shows the study as purged and
  hides its viewer links. A study that arrives again is no longer purged
  (worker/ingest.py calls core/recorder.study_received_again).
- studies_kept_idx: the studies still in Orthanc, oldest first, which is the order
  retention reads them in; once most studies are purged it skips them without a scan.
- events.type gains `purged`, the deletion's step on the study's timeline.
- retention_status: one row, the last retention run (when, by whom, how many purged,
  the oldest study kept and why), for the Overview and /metrics.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE studies ADD COLUMN purged_at timestamptz;
CREATE INDEX studies_kept_idx ON studies (first_received_at, id) WHERE purged_at IS NULL;
CREATE INDEX studies_purged_idx ON studies (purged_at) WHERE purged_at IS NOT NULL;

ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'received', 'stable', 'rule_matched', 'unrouted', 'ai_sent', 'ai_result_received',
    'ai_result_stable', 'ai_result_unmatched', 'ai_overdue', 'delivery_queued',
    'delivery_started', 'delivered', 'delivery_failed', 'delivery_dead',
    'manual_retry', 'resend', 'cancelled', 'sender_rejected', 'purged'));

CREATE TABLE retention_status (
    name          text PRIMARY KEY,
    ran_at        timestamptz NOT NULL,
    actor         text NOT NULL,
    source        text NOT NULL,
    purged        integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    kept          integer NOT NULL DEFAULT 0,
    oldest_kept   jsonb,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb
);
"""

DOWNGRADE = """
DROP TABLE retention_status;
DELETE FROM events WHERE type = 'purged';
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'received', 'stable', 'rule_matched', 'unrouted', 'ai_sent', 'ai_result_received',
    'ai_result_stable', 'ai_result_unmatched', 'ai_overdue', 'delivery_queued',
    'delivery_started', 'delivered', 'delivery_failed', 'delivery_dead',
    'manual_retry', 'resend', 'cancelled', 'sender_rejected'));
DROP INDEX studies_purged_idx, studies_kept_idx;
ALTER TABLE studies DROP COLUMN purged_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
