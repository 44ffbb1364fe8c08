"""Security tests reuse the integration fixtures: a worker over the harness's servers,
and the app's AppTest environment (seeded users of each role, one database per test)."""

from tests.integration.app.conftest import app_env, flows, navigation_mode, open_page  # noqa: F401
from tests.integration.conftest import db, env, workers  # noqa: F401
