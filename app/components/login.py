"""What an anonymous browser session sees: a pointer to the login form, and a redirect to it.

The form itself is app/auth_routes.py's /login (an HTTP form, so that the server can
set the HttpOnly session cookie; failed attempts are counted and audited there by
core.auth.authenticate). This page sends the browser to it, with the page and query it
was on, or, right after a logout, to /logout, which clears the cookie.
"""

from __future__ import annotations

import streamlit as st
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app.auth_routes import LOGIN_PATH, login_url, mounted
from app.components.access import MESSAGE_KEY, REDIRECT_KEY, requested_url


def send_browser_to(path: str) -> None:
    """Make the browser load `path` (a path of this site), as st.login and st.logout do.

    Streamlit 1.67 has no public call for it; its frontend answers this message with
    `window.location.href = url`. (st.html with a script would also do, but no page of
    the app renders HTML: tests/badinput/test_hostile_forms.py.)
    """
    ctx = get_script_run_ctx()
    if ctx is None or not path.startswith("/") or path.startswith("//"):  # never another site
        return
    message = ForwardMsg()
    message.auth_redirect.url = path
    ctx.enqueue(message)


def login_page() -> None:
    st.title("Routing hub")
    message = st.session_state.get(MESSAGE_KEY)
    st.info(message or "Please log in to use the routing hub.")
    target = st.session_state.get(REDIRECT_KEY) or login_url(requested_url())
    if not mounted():
        st.error("This process does not serve the login form: start the app with "
                 "`streamlit run app/server.py` (as `make run` does), not app/main.py.")
        return
    st.markdown(f"[{'Log in' if target.startswith(LOGIN_PATH) else 'Continue'}]({target})")
    send_browser_to(target)
