# Everything runs from a local virtual environment that these targets create and fill.
VENV ?= .venv
PY := $(VENV)/bin/python
EDGELIN := $(VENV)/bin/edgelin

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The main job on the built-in default model: export, then generate from the package.
demo: install
	$(EDGELIN) export -o out/demo --force
	$(EDGELIN) generate out/demo --prompt "ROMEO:" --max-new-tokens 120 --seed 0

test: install
	$(PY) -m pytest -n 2 --dist loadfile

clean:
	rm -rf out .pytest_cache
