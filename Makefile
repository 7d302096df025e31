# The README's two set-up commands: `make demo` and `make test`. Both start from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install test test-all demo data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[cpu,test,readers]"
	touch $(STAMP)

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist' (puts the idx files in $(FMNIST))"; exit 1; fi

test: install data
	$(BIN)/python -m pytest -q --durations=15

test-all: install data
	$(BIN)/python -m pytest -q -m ""

demo: install data
	$(BIN)/python tools/demo.py

clean:
	rm -rf demo-out .pytest_cache
