"""qi_drill_studies: the studies behind a number of a QI page.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12

The app's QI charts and KPIs open the Studies list filtered to the studies they count
(issue 16, drill-down). db/sql/qi_drill_studies.sql selects them with the same views,
filters, buckets and groups as the aggregate that shows each number. A new function
only: the cached rows are not recomputed (core.schema_sql.CACHE_INPUTS).
"""

from alembic import op

from core import schema_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

LOADS_DB_SQL = True


def upgrade() -> None:
    schema_sql.load_in_migration(revision)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS qi_drill_studies(text, text, timestamptz, timestamptz, text, date, text, "
               "text, double precision, double precision, double precision, double precision, text, text[], "
               "text[], text[], text[])")
