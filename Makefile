# Two commands for a fresh machine (Python 3.11, no GPU):
#   make demo    install everything into .venv, then run the demo study end to end (about 5.5 min on
#                2 cores), then the many-shot and robustness miniatures (about 3.5 more minutes)
#   make test    install everything into .venv (and the system packages the suite runs: chromium,
#                slurm-wlm, munge), then run the test suite
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

DEMO_STUDIES := demo demo_manyshot demo_robustness

demo: install
	@for study in $(DEMO_STUDIES); do \
	  HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores $(CORES) all --config study=$$study || exit 1; \
	done
	@for study in $(DEMO_STUDIES); do echo "report: reports/$$study/index.html"; done

# The suite runs a real SLURM and a real browser: their Debian packages are installed first when
# missing (root or passwordless sudo; otherwise one line says what to install).
test: install
	bash tests/system_packages.sh
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean-demo:
	for study in $(DEMO_STUDIES); do \
	  rm -rf data/raw/$$study data/prepared/$$study data/subsets/$$study data/views/$$study \
	    runs/$$study reports/$$study models/$$study logs/$$study; \
	done
	rm -f models/vit_demo_tiny.* models/vit_demo_manyshot.*
