# caffe_unstable: `make test` and `make demo` set everything up from nothing (a virtualenv in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup system-packages test demo bench clean

# Fashion-MNIST (the demo's and the training tests' data) comes from Debian: /usr/share/datasets/fashion-mnist/
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: system-packages $(STAMP)

system-packages:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist; }

$(STAMP): setup.cfg setup.py pyproject.toml proto/caffe.proto scripts/gen_proto.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) scripts/gen_proto.py
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) scripts/bench/net_speed.py

clean:
	rm -rf $(VENV) build *.egg-info caffe_unstable/proto/caffe_pb2.py caffe_unstable/proto/caffe.proto
