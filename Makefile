# The front door: `make help` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
# The install is redone when the project's settings, the lock or its list of files change (a new module must be
# linked into the editable tree), or the tree of links is gone.
SOURCES = $(shell find client model export serving -name __pycache__ -prune -o -type f -print | LC_ALL=C sort)
STAMP  := $(VENV)/.installed-$(shell { cat pyproject.toml $(LOCK); echo $(SOURCES) $(wildcard build/__editable__.*); } | cksum | cut -d' ' -f1)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export DISABLE_MKDOCS_2_WARNING ?= true
export NO_MKDOCS_2_WARNING ?= 1

.DEFAULT_GOAL := help
.PHONY: help setup lock browser test typecheck docs docs-shots docs-serve ui k8s-check image client-image train-image demo demo-model moments train-compare corpus standin model export serve bench clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: $(STAMP) browser ## create .venv with the exact versions of requirements.lock, and Chromium for the browser test (quick when done)

# Exact versions with their hashes, then the project itself with nothing resolved again (its build backend,
# setuptools, comes from the lock too). `editable_mode=strict`: a tree of links, build/__editable__.*, maps
# `s3d_retrieval.*` to the top-level folders, so static tools (mypy, pyright, an IDE) resolve the names as Python
# does; setuptools' default finder maps them only at import time.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	rm -f $(VENV)/.installed-* && touch $@

LOCK_EXTRAS := --extra tf --extra ui --extra milvus --extra dev
lock: $(STAMP) ## re-resolve requirements.lock from pyproject.toml, keeping pins that still fit (UPGRADE=1: newest of everything)
	$(PY) -m uv pip compile -q pyproject.toml $(LOCK_EXTRAS) --universal --python-version 3.11 --generate-hashes \
	  $(if $(UPGRADE),--upgrade) --custom-compile-command 'make lock' -o $(LOCK)

browser: ## Debian's Chromium for the search page's browser test (apt-get, as root; says so where it cannot)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: Chromium is not installed (needs root and apt-get); the browser test will say it was skipped"

# Test files are shared among TEST_WORKERS processes (a file's tests stay in one, with its fixtures); on two cores
# two processes overlap one's single-threaded tracing and waiting with the other's work.
TEST_WORKERS ?= 2
test: setup k8s-check typecheck docs ## validate the Kubernetes manifests, type-check, build the docs, then run the suite (TEST_WORKERS=2 processes)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10

typecheck: setup ## mypy over the whole package, as installed (settings in pyproject.toml)
	$(PY) -m mypy

docs: setup ## build the documentation site strictly into build/site (its reference pages generated from the code)
	$(PY) -m mkdocs build --strict

docs-shots: docs browser ## look at the built site as a reader would: screenshots in headless Chromium (build/site-shots/); fails on a request that leaves loopback
	$(PY) docs/gen/screenshots.py

docs-serve: setup ## browse the documentation at http://127.0.0.1:8000/ while editing it
	$(PY) -m mkdocs serve

k8s-check: setup ## build every Kustomize overlay (serving/k8s/overlays) with kubectl kustomize and validate it offline, strictly
	$(PY) -m serving.manifests check

IMAGE_VARIANT ?= gpu
image: model ## build the TF Serving image with MODEL_DIR baked in (needs a Docker engine)
	docker build -f serving/Dockerfile -t s3d-milnce-serving:1$(if $(filter cpu,$(IMAGE_VARIANT)),-cpu) \
	  $(if $(filter cpu,$(IMAGE_VARIANT)),--build-arg BASE_IMAGE=$$($(PY) -c 'from serving.config import TF_SERVING_IMAGE as i; print(i)')) .

client-image: ## build the thin client image for indexing Jobs (no TensorFlow; needs a Docker engine)
	docker build -f serving/client.Dockerfile -t s3d-client:1 .

train-image: ## build the training image for the multi-worker training Job (TensorFlow GPU; needs a Docker engine)
	docker build -f serving/train.Dockerfile -t s3d-train:1 .

DEMO_MODULE    := model/demo/s3d-demo-tiny
DEMO_MODEL_DIR := out/demo/models/s3d_milnce
CORPUS         := out/corpus
DEMO_STEPS     ?= 8000
DEMO_TRAIN      = $(PY) -m model train --data $(CORPUS)/train --heldout $(CORPUS)/heldout/queries.csv \
                    --size tiny --steps $(DEMO_STEPS) --lr-decay cosine --checkpoint-every 500 --cache-mb 1500

demo: setup ## the main job, offline: serve the trained demo model, search held-out clips and a story video, write out/demo/report.html
	@ls -d $(DEMO_MODEL_DIR)/[0-9]* >/dev/null 2>&1 || $(PY) -m export --source $(DEMO_MODULE) --model-dir $(DEMO_MODEL_DIR)
	$(PY) -m serving.demo --model-dir $(DEMO_MODEL_DIR)

moments: setup ## moment figures of the demo model on the held-out clips and stories of corpus seeds 0-4: the best window alone against moments
	@ls -d $(DEMO_MODEL_DIR)/[0-9]* >/dev/null 2>&1 || $(PY) -m export --source $(DEMO_MODULE) --model-dir $(DEMO_MODEL_DIR)
	$(PY) -m serving.demo --model-dir $(DEMO_MODEL_DIR) --out out/moments --seeds 0 1 2 3 4

train-compare: setup ## the trainer against a plain MIL-NCE loop, per seed on fresh 120-video corpora (seeds 0-3, ~25 min; out/train-compare keeps runs by LABEL and seed: after a change, give a new LABEL=...)
	$(PY) -m model.plain_bench compare --root out/train-compare --seeds 0 1 2 3 --label $(or $(LABEL),trainer)

corpus: $(CORPUS)/corpus.json ## generate the narrated demo world (out/corpus: train/, heldout/, story/)

$(CORPUS)/corpus.json: | setup
	$(PY) -m model corpus $(CORPUS)

out/demo-stage1/manifest.json: $(CORPUS)/corpus.json
	$(DEMO_TRAIN) --out out/demo-stage1 --lr 1e-3

demo-model: out/demo-stage1/manifest.json ## retrain the committed demo model: MIL-NCE from scratch, then fine-tuned from it (--init); ~45 min on 2 cores, resumable
	$(DEMO_TRAIN) --out out/demo-model --lr 5e-4 --init out/demo-stage1
	rm -rf $(DEMO_MODULE).new && mkdir -p $(dir $(DEMO_MODULE)) && cp -r out/demo-model $(DEMO_MODULE).new
	rm -rf $(DEMO_MODULE) && mv $(DEMO_MODULE).new $(DEMO_MODULE) && rm -rf out/demo-model

STANDIN := models/hub/s3d-standin-tiny

standin: $(STANDIN)/tfhub_module.pb ## write the tiny stand-in hub module (models/hub/s3d-standin-tiny)

$(STANDIN)/tfhub_module.pb: | setup
	$(PY) -m model standin $(STANDIN) --size tiny

MODEL_DIR ?= models/s3d_milnce
SOURCE    ?= $(STANDIN)

export: $(if $(filter $(STANDIN),$(SOURCE)),standin,setup) ## export SOURCE (default: the tiny stand-in) as the next version in MODEL_DIR
	$(PY) -m export --source $(SOURCE) --model-dir $(MODEL_DIR)

model: setup ## make sure MODEL_DIR holds a version (exports the tiny stand-in if it is empty)
	@ls -d $(MODEL_DIR)/[0-9]* >/dev/null 2>&1 || $(MAKE) --no-print-directory export

SERVE_FLAGS ?= --model_config_file_poll_wait_seconds 10 --allow_version_labels_for_unavailable_models
serve: model ## serve MODEL_DIR: tensorflow_model_server, else Docker, else the embedded server (models.config reread every 10 s)
	$(PY) -m serving --model-dir $(MODEL_DIR) $(SERVE_FLAGS)

INDEX ?= out/demo/index
ui: setup ## the search page at http://localhost:8080/ over INDEX (default: the demo's), asking a running `make serve`
	$(PY) -m client ui --index $(INDEX) $(UI_FLAGS)

bench: model ## speed figures measured in one run, side by side as ratios (model, training at scale, client, served path, long service)
	$(PY) -m model.bench
	$(PY) -m model.training_bench
	$(PY) -m client.bench
	$(PY) -m client.milvus.bench
	$(PY) -m serving.bench --model-dir $(MODEL_DIR)
	$(PY) -m serving.service_bench --model-dir $(MODEL_DIR)

clean: ## remove the virtualenv and generated models
	rm -rf $(VENV) models out build *.egg-info
