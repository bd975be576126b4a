# The front door: `make help` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup test demo standin export serve bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with everything pinned (quick when already done)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tf,dev]'
	rm -f $(VENV)/.installed-* && touch $@

test: setup ## run the whole suite in one pytest process
	$(PY) -m pytest -q

demo: setup ## the main job, offline: index sample clips and search them
	@echo "make demo: not yet - it arrives with the thin client (search over an exported stand-in)."

STANDIN := models/hub/s3d-standin-tiny

standin: $(STANDIN)/tfhub_module.pb ## write the tiny stand-in hub module (models/hub/s3d-standin-tiny)

$(STANDIN)/tfhub_module.pb: | setup
	$(PY) -m model standin $(STANDIN) --size tiny

MODEL_DIR ?= models/s3d_milnce
SOURCE    ?= $(STANDIN)

export: $(if $(filter $(STANDIN),$(SOURCE)),standin,setup) ## export SOURCE (default: the tiny stand-in) as the next version in MODEL_DIR
	$(PY) -m export --source $(SOURCE) --model-dir $(MODEL_DIR)

serve: ## serve MODEL_DIR: tensorflow_model_server, else Docker, else the embedded server (exports first if empty)
	@ls -d $(MODEL_DIR)/[0-9]* >/dev/null 2>&1 || $(MAKE) --no-print-directory export
	$(PY) -m serving --model-dir $(MODEL_DIR) $(SERVE_FLAGS)

bench: setup ## speed figures, side by side as ratios (model forward pass by clip size, ...)
	$(PY) -m model.bench

clean: ## remove the virtualenv and generated models
	rm -rf $(VENV) models build *.egg-info
