"""Issue 15: series refused as AI results, and a refused routing.yml recorded once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

* `series.kind` gains `rejected`: a series whose sender AET is in AI_RESULT_AETS but
  whose RemoteIP is not the host registered for that AET (core/sender_checks.py). It is
  recorded so an operator sees it, but the rules, the stability sweep and resends skip
  it, and the QI views (which select `original` and `ai_result` by name) ignore it.
* `events.type` gains `sender_rejected`, the flag on such a series' study timeline.
* `config_status.error_checksum`: the checksum of the file content whose refusal is
  recorded. A worker records (and audits) a refusal only when this differs, so each
  distinct broken content gives one status entry and one audit entry, however many
  file events or workers see it (worker/rules_watch.py).

Downgrade deletes the rejected series (their instances stay in Orthanc) and their events.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE series DROP CONSTRAINT series_kind_check;
ALTER TABLE series ADD CONSTRAINT series_kind_check CHECK (kind IN ('original', 'ai_result', 'rejected'));
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'received', 'stable', 'rule_matched', 'unrouted', 'ai_sent', 'ai_result_received',
    'ai_result_stable', 'ai_result_unmatched', 'ai_overdue', 'delivery_queued',
    'delivery_started', 'delivered', 'delivery_failed', 'delivery_dead',
    'manual_retry', 'resend', 'cancelled', 'sender_rejected'));
ALTER TABLE config_status ADD COLUMN error_checksum text;
"""

DOWNGRADE = """
DELETE FROM events WHERE type = 'sender_rejected';
DELETE FROM series WHERE kind = 'rejected';
ALTER TABLE series DROP CONSTRAINT series_kind_check;
ALTER TABLE series ADD CONSTRAINT series_kind_check CHECK (kind IN ('original', 'ai_result'));
ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'received', 'stable', 'rule_matched', 'unrouted', 'ai_sent', 'ai_result_received',
    'ai_result_stable', 'ai_result_unmatched', 'ai_overdue', 'delivery_queued',
    'delivery_started', 'delivered', 'delivery_failed', 'delivery_dead',
    'manual_retry', 'resend', 'cancelled'));
ALTER TABLE config_status DROP COLUMN error_checksum;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
