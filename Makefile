# Everything runs from a local virtual environment that these targets create and fill.
VENV ?= .venv
PY := $(VENV)/bin/python
EDGELIN := $(VENV)/bin/edgelin

.PHONY: install demo test bench clean

$(VENV)/.installed-all: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[all]'
	touch $@

$(VENV)/.installed: $(VENV)/.installed-all
	$(PY) -m pip install -q -e '.[dev]'
	@# The AArch64 cross compiler lets the TVM back end build Arm libraries (its test skips without it).
	command -v aarch64-linux-gnu-gcc >/dev/null || (apt-get update -q && apt-get install -y -q gcc-aarch64-linux-gnu) \
		|| echo "note: gcc-aarch64-linux-gnu not installed; the AArch64 TVM test will skip"
	touch $@

install: $(VENV)/.installed

# The main job on the built-in default model: export, calibrate, quantize to INT8 and validate
# against FP32 (report in out/demo/report), then generate from the INT8 package.
demo: $(VENV)/.installed-all
	$(EDGELIN) export --int8 -o out/demo --force
	$(EDGELIN) generate out/demo --prompt "ROMEO:" --max-new-tokens 120 --seed 0

test: install
	$(PY) -m pytest -n 2 --dist loadfile

clean:
	rm -rf out .pytest_cache
