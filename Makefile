# Two commands for a fresh machine (Python 3.11, no GPU):
#   make demo    install everything into .venv, then run the demo study end to end
#   make test    install everything into .venv, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install demo test clean-demo

$(BIN)/vpeft: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch: the constraints keep pip from pulling several GB of CUDA wheels.
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[test]'
	touch $@

install: $(BIN)/vpeft

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores $(CORES) all
	@echo "report: reports/demo/index.html"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean-demo:
	rm -rf data/raw/demo data/prepared/demo runs/demo reports/demo models/vit_demo_tiny.* logs/demo
