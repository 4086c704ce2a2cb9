# Everything runs from a local virtual environment that these targets create and fill.
VENV ?= .venv
PY := $(VENV)/bin/python
EDGELIN := $(VENV)/bin/edgelin

.PHONY: install demo test bench clean

# Everything: the runtime and every extra (export: torch, ...; openvino; tvm; tokenizers). PyPI's
# torch==2.13.0 for Linux x86_64 is the CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes the CPU build from PyTorch's index first.
TORCH_INDEX ?=

$(VENV)/.installed-all: pyproject.toml
	python3 -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX))
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
