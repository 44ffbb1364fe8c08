"""Drop series_arrivals: arrivals are recorded at NewSeries again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

0013 added the table for a design that noted a NewSeries and read the series only at
StableSeries (issue 19 goal 1). Measured side by side, that design cost the worker more
CPU during ingest and gave Orthanc a lower intake ratio than reading at NewSeries
(bench/RESULTS.md, "Issue 19 goal 1"), so the worker no longer uses the table. A series
noted there but not yet recorded is recorded when its StableSeries or StableStudy change is
handled, as a series whose NewSeries was missed always is.
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TABLE series_arrivals")


def downgrade() -> None:
    op.execute(
        "CREATE TABLE series_arrivals (orthanc_id text PRIMARY KEY, arrived_at timestamptz NOT NULL);"
        "CREATE INDEX series_arrivals_at_idx ON series_arrivals (arrived_at);"
    )
