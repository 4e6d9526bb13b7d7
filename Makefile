# anatomark: every target creates the virtual environment on first use.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
DATASET ?= ../shared/datasets/isbi2015
MODEL   ?= default

.PHONY: install run evaluate test lint clean-venv

$(VENV)/.installed: requirements.txt constraints.txt setup.cfg
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip wheel "setuptools<80"
	$(VPY) -m pip install -q -r requirements.txt -c constraints.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

## The main job: evaluate the shipped model on ISBI 2015 Test1 (senior) and write overlays for two images.
run: install
	$(VENV)/bin/anatomark evaluate --model $(MODEL) --dataset $(DATASET) --split test1 --annotator senior --json runs/evaluate_test1.json
	$(VENV)/bin/anatomark infer $(DATASET)/images/151.jpg $(DATASET)/images/152.jpg --model $(MODEL) --out runs/infer --markups

evaluate: run

test: install
	$(VPY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check lib tests apps benchmarks sample-apps
	$(VENV)/bin/ruff format --check lib tests apps benchmarks sample-apps

clean-venv:
	rm -rf $(VENV)
