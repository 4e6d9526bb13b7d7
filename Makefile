# anatomark: every target creates the virtual environment on first use.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
DATASET ?= ../shared/datasets/isbi2015
MODEL   ?= default
ANNOTATOR ?= mean
STUDIES ?= runs/studies
PORT    ?= 8000
# server options for `make serve` / `make stack`: CONF="auto_train_every_n_labels 5 gate_min_val_images 3" (pairs)
CONF    ?=
CONF_ARGS = $(shell set -- $(CONF); if [ $$(( $$# % 2 )) -ne 0 ]; then echo "--conf-needs-key-value-pairs"; fi; \
	while [ $$# -ge 2 ]; do printf -- '--conf %s %s ' "$$1" "$$2"; shift 2; done)

.PHONY: install run evaluate test lint clean-venv serve stack-deps viewer stack test-dicom

# Debian packages for the DICOM stack (Orthanc + DICOMweb plugin) and the browser test (Chromium); apt-get is run
# through sudo unless we are root. node/npm must be on PATH for the viewer.
ORTHANC_PORT ?= 8042
VIEWER_PORT  ?= 3000
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VIEWER  := viewer

$(VENV)/.installed: requirements.txt constraints.txt setup.cfg
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip wheel "setuptools<80"
	$(VPY) -m pip install -q -r requirements.txt -c constraints.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

## The main job: evaluate the shipped model on ISBI 2015 Test1 (mean of both annotators) and write overlays for two images.
run: install
	$(VENV)/bin/anatomark evaluate --model $(MODEL) --dataset $(DATASET) --split test1 --annotator $(ANNOTATOR) --json runs/evaluate_test1.json
	$(VENV)/bin/anatomark infer $(DATASET)/images/151.jpg $(DATASET)/images/152.jpg --model $(MODEL) --out runs/infer --markups

evaluate: run

test: install stack-deps viewer
	$(VPY) -m pytest -q --durations=25 tests

## Orthanc, its DICOMweb plugin and Chromium from Debian, installed with apt-get only when missing.
stack-deps:
	@missing=""; \
	[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "Installing with apt-get:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

## The viewer: playwright-core (npm ci) and the prebuilt OHIF 3 app (npm pack @ohif/app, pinned + checked).
viewer: $(VIEWER)/node_modules/.package-lock.json $(VIEWER)/ohif-dist/.anatomark-ohif-version

$(VIEWER)/node_modules/.package-lock.json: $(VIEWER)/package.json $(VIEWER)/package-lock.json
	cd $(VIEWER) && nice -n 10 npm ci --no-audit --no-fund

$(VIEWER)/ohif-dist/.anatomark-ohif-version: $(VIEWER)/package.json $(VIEWER)/fetch-ohif.mjs
	cd $(VIEWER) && node fetch-ohif.mjs

## The whole stack on loopback: Orthanc :8042 (DICOMweb), MONAI Label :8000 on it (DX/CR), OHIF :3000.
## UPLOAD="a.dcm b.dcm" stores DICOM files first; CONF="key value ..." passes server options (also for serve) (make PNG/JPG into DICOM with `anatomark to-dicom`).
stack: install stack-deps viewer
	$(VPY) -m anatomark.stack up --models $(MODEL) --port $(PORT) --orthanc-port $(ORTHANC_PORT) \
		--viewer-port $(VIEWER_PORT) $(if $(UPLOAD),--upload $(UPLOAD)) $(CONF_ARGS)

## DICOMweb server tests and the headless-Chromium OHIF test only.
test-dicom: install stack-deps viewer
	OMP_NUM_THREADS=1 $(VPY) -m pytest -q tests/monailabel/test_dicomweb.py tests/monailabel/test_ohif_e2e.py tests/data/test_dicom_write.py

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
		--host 127.0.0.1 --port $(PORT) $(CONF_ARGS)
