"""The OHIF gateway: the `viewer` program on OHIF_PORT (docs/architecture.md, "The study viewer").

One small Starlette application, under uvicorn, that serves the OHIF v3 viewer's static
files (installed by ops/stack/ohif.py) behind the app's login, and forwards DICOMweb
reads, and nothing else, to Orthanc with Orthanc's credentials, which never leave this
process. Modules: `app.py` (the application, its gate and the static files),
`login.py` (the login form and logout, core/login_pages.py), `dicomweb.py` (what may be
forwarded, and the forwarding), `masking.py` (patient identifiers for the viewer role),
`audit.py` (one audit entry per study per session and minute).
"""
