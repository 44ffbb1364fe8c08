"""Running the hub's whole stack: natively under supervisord, or with Docker Compose.

`python -m ops.stack <run|start|stop|restart|status|logs>` is what the Make targets
call. Each module has one job: `packages` (Debian prerequisites), `layout` (where the
stack keeps its state), `supervisor_conf` (rendering supervisord's configuration),
`supervisor` (talking to a running supervisord), `bootstrap` (database, migrations,
first admin), `probes` (real health checks), `procscan` (finding this stack's
processes by what they run), `native` and `compose` (lifecycles), `container` (the
entry point inside the compose images) and `cli`.
"""
