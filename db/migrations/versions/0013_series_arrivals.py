"""Series arrivals: what Orthanc's NewSeries changes say, kept until the series is recorded.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

Issue 19 goal 1 (ingest headroom). The worker used to record a series at NewSeries with
three REST reads (series, study, first instance's metadata), in the middle of the
ingest burst, where Orthanc 1.10.1's serialised index made the reads and the ingest
writes wait for each other. It now keeps only what the change itself says, the series'
Orthanc id and when it arrived, one row per series written with the /changes cursor,
and reads Orthanc once, at StableSeries (worker/tailer.py). The row is taken when the
series is recorded; the stability sweep finds rows whose StableSeries never came
(docs/architecture.md, "Facts checked on this machine"). The Overview and the Studies page count them as
"series arriving".
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE series_arrivals (
    orthanc_id  text PRIMARY KEY,
    arrived_at  timestamptz NOT NULL
);
CREATE INDEX series_arrivals_at_idx ON series_arrivals (arrived_at);
"""

DOWNGRADE = """
DROP TABLE series_arrivals;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
