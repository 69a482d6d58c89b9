# EchoLab: everything runs from a virtualenv in the checkout (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/phantom_echonet
DEMO_RUN ?= runs/quickstart

.PHONY: install demo lint test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	# a gentler phantom than the default (EF uniform on 20-80, narrow probe pose) so minutes of CPU learn the heart;
	# the last step prints the test MAE beside the mean predictor's and the anatomy-free shortcut's on this data
	test -f $(DEMO_DATA)/FileList.csv || $(VENV)/bin/echolab phantom --format echonet --out $(DEMO_DATA) --num-videos 160 --seed 0 --ef-distribution uniform --pose-variation 0.3
	rm -rf $(DEMO_RUN) $(DEMO_RUN)_stage2
	$(VENV)/bin/echolab fit --config configs/coreecho/phantom.yaml --config configs/quickstart.yaml --data.init_args.data_dir $(DEMO_DATA)
	$(VENV)/bin/echolab fit --config configs/coreecho/phantom.yaml --config configs/quickstart_stage2.yaml --data.init_args.data_dir $(DEMO_DATA)
	$(VENV)/bin/echolab test --config configs/coreecho/phantom.yaml --config configs/quickstart_stage2.yaml --data.init_args.data_dir $(DEMO_DATA) --ckpt_path $(DEMO_RUN)_stage2/checkpoints/best.ckpt
	$(PY) benchmarks/phantom_shortcuts.py --echonet $(DEMO_DATA) --run $(DEMO_RUN)_stage2 --no-disease

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install lint
	$(PY) -m pytest -q --durations=20

bench: install
	$(PY) benchmarks/data_loading.py
	$(PY) benchmarks/dataset_loading.py
	$(PY) benchmarks/eval_memory.py
	test ! -f benchmarks/coreecho_throughput.py || $(PY) benchmarks/coreecho_throughput.py
	test ! -f benchmarks/cardiacnet_bench.py || $(PY) benchmarks/cardiacnet_bench.py

clean:
	rm -rf $(VENV) runs data
