# `make demo`: synthetic studies through the running stack, with a simulated AI node
# and PACS on 127.0.0.1 (testkit/demo.py). Start the stack first with `make run`.
#   make demo [DEMO_ARGS="--studies 40 --keep-running"]
DEMO_ARGS ?=
DEMO_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)

.PHONY: demo
demo: $(if $(VENV_STAMP),$(VENV_STAMP),) ## send synthetic studies through the running stack (AI node and PACS simulated on loopback)
	@cd $(DEMO_ROOT) && .venv/bin/python -m testkit.demo $(DEMO_ARGS)
