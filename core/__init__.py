"""The runtime domain the worker, the app and the tooling share."""
