"""Entry point of the operations app (`streamlit run app/main.py`, port OPERATOR_UI_PORT).

It sets the page up, shows the login form to anonymous sessions, and otherwise builds
the navigation for the user's role. Each page still checks the role itself
(app.components.access.require_role), so hiding a page here is convenience, not
the security boundary.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
ROOT = APP_DIR.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ first, not the project
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.components.access import current_user, logout, use_navigation_mode  # noqa: E402
from app.components.login import login_page  # noqa: E402
from core.auth import role_at_least  # noqa: E402
from core.states import Role  # noqa: E402

PAGES = APP_DIR / "pages"
OPERATIONS = (
    ("overview.py", "Overview", ":material/monitor_heart:", Role.VIEWER),
    ("studies.py", "Studies", ":material/list:", Role.VIEWER),
    ("study_detail.py", "Study detail", ":material/timeline:", Role.VIEWER),
    ("queue.py", "Queue", ":material/queue:", Role.VIEWER),
    ("destinations.py", "Destinations", ":material/lan:", Role.VIEWER),
    ("rules.py", "Rules", ":material/rule:", Role.VIEWER),
    ("alerts.py", "Alerts", ":material/notifications:", Role.VIEWER),
    ("retention.py", "Retention", ":material/delete_sweep:", Role.OPERATOR),
    ("audit.py", "Audit log", ":material/history:", Role.VIEWER),
)
QI = (
    ("qi_turnaround.py", "Turnaround", ":material/timer:"),
    ("qi_ai_round_trip.py", "AI round trip", ":material/sync:"),
    ("qi_failures.py", "Failures", ":material/error:"),
    ("qi_volumes.py", "Volumes", ":material/bar_chart:"),
    ("qi_sla.py", "SLA", ":material/verified:"),
)
ADMIN = (
    ("users.py", "Users", ":material/group:", Role.ADMIN),
    ("api_tokens.py", "API tokens", ":material/key:", Role.ADMIN),
)


def _pages(role: str) -> dict[str, list[st.Page]]:
    sections: dict[str, list[st.Page]] = {
        "Operations": [
            st.Page(PAGES / file, title=title, icon=icon, default=(file == "overview.py"))
            for file, title, icon, minimum in OPERATIONS
            if role_at_least(role, minimum)
        ],
    }
    qi = [st.Page(PAGES / file, title=title, icon=icon) for file, title, icon in QI if (PAGES / file).is_file()]
    if qi:
        sections["QI analytics"] = qi
    admin = [st.Page(PAGES / file, title=title, icon=icon) for file, title, icon, minimum in ADMIN
             if role_at_least(role, minimum)]
    if admin:
        sections["Admin"] = admin
    return sections


def main() -> None:
    use_navigation_mode()
    st.set_page_config(page_title="Routing hub", page_icon=":material/hub:", layout="wide")
    user = current_user()
    if user is None:
        st.navigation([st.Page(login_page, title="Log in", url_path="login")], position="hidden").run()
        return
    navigation = st.navigation(_pages(user["role"]), expanded=True)
    with st.sidebar:
        st.caption(f"Logged in as **{user['username']}** ({user['role']})")
        if st.button("Log out", key="logout_button"):
            logout("You have logged out.")
            st.rerun()
    navigation.run()


if __name__ == "__main__":  # Streamlit runs this file as __main__; importing it runs nothing
    main()
