# Setup, main job and tests for a fresh Debian machine (root, PyPI and Debian packages reachable).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1 torchvision==0.29.1
APT_PACKAGES := dataset-fashion-mnist chromium postgresql

.PHONY: setup system run test lint bench-quick

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian packages: the Fashion-MNIST data set, Chromium (report rendering test), PostgreSQL (multi-worker test).
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The main job: train the default model (textbook LeNet-5) on Fashion-MNIST.
run: setup system
	$(VENV)/bin/cnnlab train

test: setup system
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=25

lint: setup
	@test -x $(VENV)/bin/ruff || $(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check src tests benchmarks

bench-quick: setup system
	$(PY) benchmarks/speed.py --quick
