# gpufleet verbs. Everything runs from the repository root with the project's own venv.
# INVENTORY defaults to the built-in lab; point it at inventory/prod.py for the real fleet.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
INVENTORY ?= inventory/lab.py
LAB_NODES ?= 2
LAB_LBS   ?= 1
LAB_DATA_HOSTS ?= 0
PYTEST_ARGS ?=
ROLLOUT_ARGS ?=
BENCH_SIZES ?= 1 2 4
NODE ?= gpu-node-1
SCALE_HOSTS ?= 32

.PHONY: help install deploy deploy-dry validate verify drift rollout inventory lab-up lab-down lab-purge lab-status \
        test test-unit test-lab lint plan clean bench bench-scale bench-reads bench-rollout bench-timeline

help:  ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(BIN)/gpufleet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/gpufleet  ## create .venv with gpufleet and its test tools

deploy: install lab-up-if-lab  ## converge $(INVENTORY) (default: the lab, started if needed)
	$(BIN)/pyinfra -y $(INVENTORY) deploy.py
	@if [ "$(INVENTORY)" = inventory/lab.py ]; then $(BIN)/gpufleet lab welcome; fi

deploy-dry: install  ## show what a deploy would change, change nothing
	$(BIN)/pyinfra --dry $(INVENTORY) deploy.py

validate: install  ## check every host's data in $(INVENTORY); exit 1 on any error
	$(BIN)/gpufleet validate $(INVENTORY)

verify: install  ## the verify ladder on every GPU node of $(INVENTORY) (exit 0 pass, 2 a check failed, 1 unreachable)
	$(BIN)/gpufleet verify $(INVENTORY)

drift: install  ## compare every host of $(INVENTORY) with the repository (exit 0 clean, 2 drift, 1 not checked)
	$(BIN)/gpufleet drift $(INVENTORY)

rollout: install  ## roll a change across $(INVENTORY) node by node: make rollout ROLLOUT_ARGS="--data k=v"
	$(BIN)/gpufleet rollout $(INVENTORY) $(ROLLOUT_ARGS)

plan: install  ## does a model fit a replica, and with how much KV cache: make plan PLAN_ARGS="--model ... --gpus 2x32"
	$(BIN)/gpufleet plan $(or $(PLAN_ARGS),--model Qwen/Qwen3-32B-AWQ)

inventory: install  ## list nodes and load-balanced replicas of $(INVENTORY)
	$(BIN)/gpufleet inventory $(INVENTORY)

.PHONY: lab-up-if-lab
lab-up-if-lab:
	@if [ "$(INVENTORY)" = inventory/lab.py ]; then $(MAKE) --no-print-directory lab-up; fi

lab-up: install  ## start the lab ($(LAB_NODES) GPU nodes, $(LAB_LBS) LB, LAB_DATA_HOSTS=1: Milvus on db-1) or adopt it
	lab/ensure-engine.sh
	$(BIN)/gpufleet lab up --nodes $(LAB_NODES) --lbs $(LAB_LBS) --data-hosts $(LAB_DATA_HOSTS)

lab-down: install  ## remove the lab's containers, volumes, network and state (keeps cached images)
	$(BIN)/gpufleet lab down

lab-purge: install  ## lab-down and remove the cached lab images too
	$(BIN)/gpufleet lab down --purge

lab-status: install  ## show the lab's hosts and services
	$(BIN)/gpufleet lab status

test: install  ## the whole suite: unit tests, then lab integration tests (starts the lab)
	lab/ensure-engine.sh
	$(BIN)/python -m pytest -ra --durations=15 $(PYTEST_ARGS)

test-unit: install  ## unit tests only (no lab, no Docker)
	$(BIN)/python -m pytest -ra -m 'not lab' $(PYTEST_ARGS)

test-lab: install  ## lab integration tests only
	lab/ensure-engine.sh
	$(BIN)/python -m pytest -ra -m lab $(PYTEST_ARGS)

lint: install  ## ruff over the project
	$(BIN)/ruff check gpufleet operations tests deploy.py config.py inventory group_data files

clean:  ## remove the venv and caches (not the lab: see lab-down)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

bench: install lab-up  ## floor vs no-op converge vs drift on 1, 2 and 4 lab nodes (prints a table)
	$(BIN)/python -m gpufleet.bench $(BENCH_SIZES)

bench-scale: install lab-up  ## 1 vs $(SCALE_HOSTS) light stand-in hosts: base role converge and check, control CPU, profile
	$(BIN)/python -m gpufleet.bench_scale $(SCALE_HOSTS) --profile

bench-reads: install  ## the costliest remembered reads on one host: make bench-reads NODE=gpu-node-1 (after a deploy)
	$(BIN)/python -m gpufleet.bench_reads $(INVENTORY) $(NODE)

bench-timeline: install  ## one no-op converge and one drift of the lab as deployed, SSH command by command (the critical path)
	$(BIN)/python -m gpufleet.bench --timeline

bench-rollout: install  ## rollout wall time vs the sum of replica restart-to-ready, on $(INVENTORY) (converged)
	$(BIN)/python -m gpufleet.bench_rollout $(INVENTORY)
