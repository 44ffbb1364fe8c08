"""Fixtures for the bad-input tests: the integration fixtures (env, workers, db) and the app's."""

from tests.integration.app.conftest import app_env, flows, navigation_mode, open_page  # noqa: F401
from tests.integration.conftest import db, env, workers  # noqa: F401
