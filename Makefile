# The README's two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
OUT ?= out

.PHONY: run test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	# torch first and pinned: it is the CPU build on this machine's disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The main job. Until the gRPC service lands: explain a bundled photograph with the CLI.
run: $(STAMP)
	$(BIN)/saliency explain --sample chelsea --model efficientnet_lite0 \
	    --methods vanilla,input_x_gradient,gradcam,gradcam_pp,eigencam,ig,smoothgrad,rise \
	    --top-k 2 --out $(OUT)/chelsea --raw

test: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check service tests bench

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
