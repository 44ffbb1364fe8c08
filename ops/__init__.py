"""Operations tooling: stack control, installers, setup, backup/restore and the CLI."""
