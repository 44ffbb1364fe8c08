"""Operations tooling behind the Makefile targets: setup wizard, menu, seeding, backups.

Each module is a small command-line program (`python -m ops.tooling.<name>`) so that
`mk/tooling.mk` stays a thin list of targets and the logic is typed, tested Python.
"""
