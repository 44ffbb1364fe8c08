"""The operations app as the stack serves it: `streamlit run app/server.py`.

`st.App` runs app/main.py exactly as `streamlit run app/main.py` would, and adds, in the
same process and on the same port, the login and logout routes and the session gate of
app/auth_routes.py (which says why the login is an HTTP form rather than a Streamlit
one: only the server can set an HttpOnly cookie).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/server.py` puts app/ first, not the project
    sys.path.insert(0, str(ROOT))

import logging  # noqa: E402
import time  # noqa: E402

import streamlit as st  # noqa: E402
from streamlit import config as st_config  # noqa: E402
from streamlit import logger as st_logger  # noqa: E402

from app.auth_routes import asgi_middleware, routes  # noqa: E402

# Log times in UTC, labelled 'Z', like the worker's, the API's and Orthanc's (core/logs.py,
# ops/logredact.py): Streamlit's own format is the process's local time, unlabelled.
logging.Formatter.converter = time.gmtime
st_config.set_option("logger.messageFormat", "%(asctime)sZ %(levelname) -7s %(name)s: %(message)s")
st_logger.update_formatter()

app = st.App("main.py", routes=routes(), middleware=asgi_middleware())
