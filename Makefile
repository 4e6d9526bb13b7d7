# anatomark: every target creates the virtual environment on first use.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
DATASET ?= ../shared/datasets/isbi2015
MODEL   ?= default
STUDIES ?= runs/studies
PORT    ?= 8000

.PHONY: install run evaluate test lint clean-venv serve

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

## Start the MONAI Label server on 127.0.0.1:$(PORT) (connect 3D Slicer's MONAILabel module to it).
## An empty $(STUDIES) is seeded with ten ISBI test images copied from $(DATASET) (runs/ is not versioned).
serve: install
	@mkdir -p $(STUDIES)
	@if [ -z "$$(ls -A $(STUDIES))" ] && [ -d $(DATASET)/images ]; then \
		for i in 151 152 153 154 155 156 157 158 159 160; do cp $(DATASET)/images/$$i.jpg $(STUDIES)/; done; \
		echo "Seeded $(STUDIES) with 10 images from $(DATASET)"; fi
	$(VPY) -m monailabel.main start_server --app apps/landmarks --studies $(STUDIES) --conf models all \
		--host 127.0.0.1 --port $(PORT)
