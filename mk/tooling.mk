# Operations tooling (issue 6): setup wizard, menu, destinations, backups, upgrade, removal.
# Included by the main Makefile (`-include mk/*.mk`). The logic lives in ops/tooling/
# (typed, tested Python); these recipes only choose the module and pass variables.
#
#   make setup                 interactive wizard (safe to re-run; keeps secrets)
#   make quick-setup           the same with defaults, no questions
#   make menu                  interactive menu over everything below
#   make seed-modalities       apply MODALITY_* lines of .env to Orthanc
#   make backup [FILE=name.tar] [DIR=...] [ENCRYPT=1]  consistent backup archive (STATE_DIR/backups by
#                              default, named hub-backup-<time>.tar unless FILE= names it or gives a path);
#                              ENCRYPT=1 (or BACKUP_ENCRYPT=1 in .env) encrypts it with age
#   make backup-key            create the age key for encrypted backups (BACKUP_KEY_FILE)
#   make backup-list [DIR=...]
#   make restore FILE=... [KEY=...]  decrypt (KEY: age secret key, default BACKUP_KEY_FILE),
#                              verify, then restore (CONFIRM=yes when not on a terminal)
#   make upgrade               backup, update dependencies, migrate forward, restart
#   make rebuild               reinstall dependencies (compose: rebuild images), restart
#   make clean                 stop everything, remove caches; keeps data and config
#   make reset                 stop, remove the configuration; keeps the data
#   make uninstall             stop, remove data, configuration and state (typed confirmation)
#   make migrate-storage [CONFIRM_DELETE_OLD=yes]  move DICOM_STORAGE and POSTGRES_STORAGE to the
#                              paths now in .env: stop, copy with sha256 checks (resumable), record,
#                              start; the old copy stays until CONFIRM_DELETE_OLD=yes
#   make mark-data-dirs        mark an older install's data directories as the hub's, so that
#                              uninstall and restore may delete them (ops/datadirs.py)
#   make tls-certs [RENEW=1] [NEW_CA=1]  the local CA and the hub's certificate for DICOM TLS
#                              and HTTPS in TLS_DIR (ops/tls.py); never overwrites without a flag
#
# Non-interactive runs confirm with CONFIRM=yes (restore), CONFIRM=reset, CONFIRM=uninstall.
#
# STACK_MODE=auto (default: compose when a Docker engine answers, else native), native or compose.

STACK_MODE ?= auto
TOOLING_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
TOOLING_VENV ?= $(TOOLING_ROOT)/.venv
TOOLING_PY ?= $(TOOLING_VENV)/bin/python
TOOLING_RUN = cd $(TOOLING_ROOT) && STACK_MODE=$(STACK_MODE) $(TOOLING_PY) -m
# Through the main Makefile, its venv stamp; alone (make -f mk/tooling.mk), our own check.
TOOLING_VENV_DEP := $(if $(VENV_STAMP),$(VENV_STAMP),tooling-venv)

.PHONY: setup quick-setup menu seed-modalities backup backup-key backup-list restore upgrade rebuild clean reset \
	uninstall mark-data-dirs migrate-storage tls-certs tooling-venv

# The wizard runs before `make run` on a fresh machine, so it brings up the venv itself.
tooling-venv:
	@if [ ! -x "$(TOOLING_PY)" ] || ! "$(TOOLING_PY)" -c 'import pydantic_settings, typer, psycopg' 2>/dev/null; then \
		echo "==> creating $(TOOLING_VENV) and installing requirements.txt"; \
		command -v python3 >/dev/null || { echo "python3 is missing: apt-get install -y python3 python3-venv"; exit 1; }; \
		python3 -m venv $(TOOLING_VENV) && $(TOOLING_PY) -m pip install -q -r $(TOOLING_ROOT)/requirements.txt; \
	fi

setup: $(TOOLING_VENV_DEP) ## interactive wizard: paths, AE title, ports, passwords, TZ, destinations; then starts
	@$(TOOLING_RUN) ops.tooling.wizard $(SETUP_ARGS)

quick-setup: $(TOOLING_VENV_DEP) ## the setup with defaults and kept values, no questions
	@$(TOOLING_RUN) ops.tooling.wizard --defaults $(SETUP_ARGS)

menu: $(TOOLING_VENV_DEP) ## interactive menu over every target and command
	@$(TOOLING_RUN) ops.tooling.menu

seed-modalities: $(TOOLING_VENV_DEP) ## apply the MODALITY_* lines of .env to Orthanc (idempotent)
	@$(TOOLING_RUN) ops.tooling.seed

backup: $(TOOLING_VENV_DEP) ## consistent backup archive in STATE_DIR/backups (FILE=name.tar, DIR=... elsewhere; ENCRYPT=1: age)
	@$(TOOLING_RUN) ops.tooling.backup --mode $(STACK_MODE) create $(if $(DIR),--dir "$(DIR)") $(if $(FILE),--file "$(FILE)") \
		$(if $(filter 1 yes,$(ENCRYPT)),--encrypt)$(if $(filter 0 no,$(ENCRYPT)),--no-encrypt)

backup-key: $(TOOLING_VENV_DEP) ## create the age key for encrypted backups (BACKUP_KEY_FILE); copy it off the server
	@$(TOOLING_RUN) ops.tooling.backup key

backup-list: $(TOOLING_VENV_DEP) ## list the backups with their date, version and counts
	@$(TOOLING_RUN) ops.tooling.backup list $(if $(DIR),--dir "$(DIR)")

restore: $(TOOLING_VENV_DEP) ## restore FILE=archive (verified first; CONFIRM=yes without a terminal)
	@if [ -z "$(FILE)" ]; then echo "usage: make restore FILE=path/to/hub-backup-....tar[.age] [KEY=age-key] (see make backup-list)"; exit 2; fi
	@$(TOOLING_RUN) ops.tooling.backup --mode $(STACK_MODE) restore "$(FILE)" $(if $(filter yes,$(CONFIRM)),--yes) \
		$(if $(KEY),--key "$(KEY)")

upgrade: $(TOOLING_VENV_DEP) ## safety backup, pinned dependencies, migrate the database forward, restart
	@echo "==> installing the pinned dependencies"
	@$(TOOLING_PY) -m pip install -q -r $(TOOLING_ROOT)/requirements.txt
	@$(TOOLING_RUN) ops.tooling.upgrade --mode $(STACK_MODE) $(if $(filter 1 yes,$(NO_BACKUP)),--no-backup)

rebuild: $(TOOLING_VENV_DEP) ## pinned dependencies (compose: rebuild images), then restart; data kept
	@$(TOOLING_RUN) ops.tooling.rebuild --mode $(STACK_MODE)

clean: $(TOOLING_VENV_DEP) ## stop everything and remove caches; data, .env and backups kept
	@$(TOOLING_RUN) ops.tooling.uninstall --mode $(STACK_MODE) clean

reset: $(TOOLING_VENV_DEP) ## stop and remove the configuration (.env, rendered files); data kept
	@$(TOOLING_RUN) ops.tooling.uninstall --mode $(STACK_MODE) reset $(if $(CONFIRM),--confirm "$(CONFIRM)")

uninstall: $(TOOLING_VENV_DEP) ## stop and remove data, configuration and state (typed confirmation)
	@$(TOOLING_RUN) ops.tooling.uninstall --mode $(STACK_MODE) uninstall $(if $(filter 1 yes,$(KEEP_BACKUPS)),--keep-backups) \
		$(if $(CONFIRM),--confirm "$(CONFIRM)")

migrate-storage: $(TOOLING_VENV_DEP) ## move the storage to the paths in .env (checksums, resumable); CONFIRM_DELETE_OLD=yes after
	@$(TOOLING_RUN) ops.tooling.migrate_storage --mode $(STACK_MODE) $(if $(filter yes,$(CONFIRM_DELETE_OLD)),--delete-old) \
		$(if $(filter 1 yes,$(NO_START)),--no-start)

mark-data-dirs: $(TOOLING_VENV_DEP) ## mark an older install's data directories as the hub's (uninstall/restore need it)
	@$(TOOLING_RUN) ops.tooling.uninstall mark

tls-certs: $(TOOLING_VENV_DEP) ## DICOM TLS/HTTPS: local CA + hub certificate in TLS_DIR (RENEW=1 new cert, NEW_CA=1)
	@$(TOOLING_RUN) ops.tls_cli generate $(if $(filter 1 yes,$(RENEW)),--renew) $(if $(filter 1 yes,$(NEW_CA)),--new-ca)
