"""QI views and SQL functions from db/sql, one file per object.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10

Until 0007, today's definition of each QI view and function was spread over 0002, 0004
and 0006 (each re-stating what it replaced). db/sql now holds each one's current
definition in its own file, loaded in the order of db/sql/ORDER by core.schema_sql
(CREATE OR REPLACE, on this migration's transaction). The files are exactly what 0007
leaves, so this upgrade changes no definition, recomputes no cached row and grants
nothing (tests/integration/test_sql_files.py compares every view and function of a
database at 0007 with the same database after this revision), and the downgrade has
nothing to undo.

A later change to a view or function edits its file in db/sql and adds a migration like
this one (LOADS_DB_SQL = True, upgrade calling core.schema_sql.load_in_migration); see
db/sql/README.md.
"""

from core import schema_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LOADS_DB_SQL = True


def upgrade() -> None:
    schema_sql.load_in_migration(revision)


def downgrade() -> None:
    """Nothing to undo: the objects 0008 loads are those 0007 left (see the docstring)."""
