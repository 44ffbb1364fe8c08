"""Per-process resources for the Streamlit pages: settings, database engine, Orthanc client.

Pages import these instead of building their own, so a page never opens its own pool
or re-reads `.env` on every rerun.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from core.db import engine_for
from core.orthanc_client import OrthancClient
from core.settings import Settings, load_settings


@st.cache_resource
def get_settings() -> Settings:
    return load_settings()


@st.cache_resource
def get_engine() -> Engine:
    return engine_for(get_settings(), pool_size=5, max_overflow=5)


@st.cache_resource
def get_orthanc() -> OrthancClient:
    return OrthancClient.from_settings(get_settings(), timeout=10.0)
