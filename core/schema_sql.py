"""Today's QI views and SQL functions: one file each in db/sql, and the loader that applies them.

db/sql holds the current definition of every view and SQL function of the QI database,
one `<name>.sql` file per object, in the order of db/sql/ORDER (each object after
everything it uses). Tables, indexes, triggers and grants stay in the migrations
(schema history). db/sql/README.md says how to change a definition: edit its file and
add a migration whose upgrade calls `load_in_migration` (0008_sql_from_files.py is the
first).

`load(conn)` runs every file, in order, on the caller's transaction, as
`CREATE OR REPLACE`: an unchanged object stays as it is, grants and dependent objects
are kept, and a change PostgreSQL cannot make in place (a view's existing columns, a
function's return type) fails instead of dropping anything. When a definition the caches
are computed from changed (CACHE_INPUTS), the cached rows of clean studies (qi_study_fact, qi_delivery_fact) are recomputed as
migration 0006 did, and dirty studies stay dirty, so cache and live rows never disagree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from core.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "db" / "sql"
ORDER_FILE = "ORDER"
# Set to True in a migration whose upgrade() calls load_in_migration().
MIGRATION_MARKER = "LOADS_DB_SQL"

_CREATE = re.compile(r"^CREATE OR REPLACE (VIEW|FUNCTION|PROCEDURE) (\w+)\b", re.M | re.I)

# What the files define and what the database holds: views, materialized views (none
# today; they have no CREATE OR REPLACE, so a file cannot hold one) and functions and
# procedures, in every schema but the system ones, leaving out extensions' objects.
_DATABASE_OBJECTS = r"""
SELECT c.relname AS name, CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END AS kind,
       pg_get_viewdef(c.oid) || E'\n-- columns: ' || (
           SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                             ORDER BY a.attnum)
           FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
       || E'\n-- options: ' || COALESCE(array_to_string(c.reloptions, ', '), '')
       || E'\n-- owner: ' || pg_get_userbyid(c.relowner)
       || E'\n-- acl: ' || COALESCE(c.relacl::text, '') AS definition
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT p.proname, CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
       pg_get_functiondef(p.oid)
       || E'\n-- owner: ' || pg_get_userbyid(p.proowner)
       || E'\n-- acl: ' || COALESCE(p.proacl::text, '')
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1, 3
"""

# The cached rows were computed with the definitions just replaced: recompute those of
# clean studies (what the public views read from the cache), as qi_rebuild() would, but
# leave qi_dirty as it is, so that a dirty study stays dirty and is read live.
RECACHE = (
    "SELECT pg_advisory_xact_lock(hashtext('hub.qi_refresh'))",
    "DELETE FROM qi_study_fact",
    "DELETE FROM qi_delivery_fact",
    "INSERT INTO qi_study_fact SELECT * FROM qi_study_live WHERE study_id NOT IN (SELECT study_id FROM qi_dirty) "
    "ORDER BY first_received_at, study_id",
    "INSERT INTO qi_delivery_fact SELECT * FROM qi_delivery_live WHERE study_id NOT IN (SELECT study_id FROM qi_dirty) "
    "ORDER BY first_received_at, study_id",
)


# What the cached rows (qi_study_fact, qi_delivery_fact) are computed from: only a change to
# one of these can change a cached row, so only then does `load` recompute the caches. A new
# or changed aggregate or helper (qi_drill_studies, ...) leaves them as they are.
CACHE_INPUTS = frozenset({"qi_seconds", "qi_whole_second", "qi_send", "qi_study_live", "qi_delivery_live"})


class SqlFilesError(RuntimeError):
    """db/sql is inconsistent (ORDER against the files, a file against its name), or loading it
    would leave the database inconsistent (a function with two signatures)."""


@dataclass(frozen=True)
class SqlObject:
    name: str
    kind: str  # "view", "function" or "procedure"
    path: Path
    sql: str


@dataclass(frozen=True)
class DatabaseObject:
    name: str
    kind: str  # "view", "function" (or "materialized view", which db/sql cannot hold) or "procedure"
    definition: str  # pg_get_viewdef / pg_get_functiondef, plus columns, options, owner and privileges


def order(directory: Path = SQL_DIR) -> list[str]:
    """The object names of db/sql/ORDER, in load order (`#` starts a comment)."""
    names = []
    for line in (directory / ORDER_FILE).read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def objects(directory: Path = SQL_DIR) -> list[SqlObject]:
    """Every object of db/sql in load order; checks that ORDER and the files agree and that
    each file creates exactly the object it is named after."""
    names = order(directory)
    files = {p.stem: p for p in directory.glob("*.sql")}
    duplicates = sorted({n for n in names if names.count(n) > 1})
    unlisted = sorted(set(files) - set(names))
    missing = sorted(set(names) - set(files))
    if duplicates or unlisted or missing:
        raise SqlFilesError(f"{directory / ORDER_FILE} and the .sql files disagree: listed twice {duplicates}, "
                            f"files not listed {unlisted}, listed without a file {missing}")
    out = []
    for name in names:
        path = files[name]
        sql = path.read_text()
        created = _CREATE.findall(sql)
        if len(created) != 1 or created[0][1] != name:
            found = [f"{kind} {obj}" for kind, obj in created]
            raise SqlFilesError(f"{path} must hold one `CREATE OR REPLACE VIEW|FUNCTION|PROCEDURE {name}`, found {found}")
        out.append(SqlObject(name, created[0][0].lower(), path, sql))
    return out


def database_objects(conn: Connection) -> list[DatabaseObject]:
    """Every view and function of the database (extensions' left out), with its definition."""
    return [DatabaseObject(*row) for row in conn.execute(text(_DATABASE_OBJECTS)).all()]


def definitions(conn: Connection, names: Collection[str] | None = None) -> dict[str, str]:
    """name -> definition of the database's views and functions (of `names` only, if given)."""
    return _by_name(database_objects(conn), names)


def _by_name(objs: list[DatabaseObject], names: Collection[str] | None) -> dict[str, str]:
    """A function with several signatures gets all of them, one after the other."""
    out: dict[str, str] = {}
    for obj in objs:
        if names is None or obj.name in names:
            out[obj.name] = (f"{out[obj.name]}\n" if obj.name in out else "") + f"-- {obj.kind}\n{obj.definition}"
    return out


def load(conn: Connection, directory: Path = SQL_DIR, recache: bool | None = None) -> list[str]:
    """(Re)create every object of db/sql on `conn`'s transaction; returns the names whose
    definition changed (none when the database already holds the files' definitions).

    The caller commits (a migration's transaction, or `engine.begin()`). `recache`: recompute
    the cached rows of clean studies; by default when a definition they are computed from
    (CACHE_INPUTS) changed.
    """
    objs = objects(directory)
    names = [o.name for o in objs]
    before = definitions(conn, names)
    for obj in objs:
        # no parameters: the text reaches PostgreSQL as written (no bind or % parsing)
        conn.exec_driver_sql(obj.sql, execution_options={"no_parameters": True})
    loaded = [o for o in database_objects(conn) if o.name in names]
    overloaded = sorted(n for n, count in Counter(o.name for o in loaded).items() if count > 1)
    if overloaded:
        raise SqlFilesError(f"functions with more than one signature after loading db/sql: {overloaded}; "
                            "a migration must DROP FUNCTION the old signature before loading")
    after = _by_name(loaded, names)
    changed = [n for n in names if before.get(n) != after[n]]
    if recache or (recache is None and CACHE_INPUTS.intersection(changed)):
        recache_clean_studies(conn)
    if changed:
        # a view dropped and recreated by a migration has lost its grants; they are idempotent
        from core.qi import grant_read_access

        grant_read_access(conn)
    return changed


def loader_revisions(script: ScriptDirectory) -> list[str]:
    """The revisions whose migration loads db/sql (MIGRATION_MARKER), newest first."""
    return [s.revision for s in script.walk_revisions() if getattr(s.module, MIGRATION_MARKER, False)]


def recache_clean_studies(conn: Connection) -> None:
    """Recompute the cached rows of clean studies with the current definitions (RECACHE);
    also for a downgrade that restores older definitions from their text."""
    for statement in RECACHE:
        conn.execute(text(statement))


def is_newest_loader(revision: str) -> bool:
    """Whether `revision` is the newest migration that loads db/sql, i.e. whether its
    load_in_migration creates the db/sql objects. Triggers a migration creates on those
    functions need them: an older loader leaves them to the newest (0012's to 0014)."""
    from alembic import op

    context = op.get_context()
    assert context.config is not None
    loaders = loader_revisions(ScriptDirectory.from_config(context.config))
    return bool(loaders) and loaders[0] == revision


def load_in_migration(revision: str) -> list[str]:
    """What the upgrade() of a migration that sets LOADS_DB_SQL = True calls.

    db/sql describes the newest such migration, and may use columns that only migrations
    after an older one add. So an older one loads nothing when a newer one is in the script
    directory: upgrading an old database loads the files once, in the newest one, after
    every table change before it. (A migration's downgrade restores the definitions it
    replaced from their text, as 0006_attempt_durations.py does, or does nothing when it
    changed nothing, as 0008's.)
    """
    from alembic import op

    context = op.get_context()
    assert context.config is not None
    loaders = loader_revisions(ScriptDirectory.from_config(context.config))
    if revision not in loaders:
        raise SqlFilesError(f"migration {revision} calls load_in_migration without {MIGRATION_MARKER} = True")
    if loaders[0] != revision:
        return []
    return load(op.get_bind())
