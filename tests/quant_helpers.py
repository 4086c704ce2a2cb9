"""Tiny FP packages and calibration tables shared by tests/quantize, tests/calibration and
tests/validate: built once per test process (a module-level cache), in pytest's temp dir."""
from __future__ import annotations

import pytest

from edgelin.calibration import calibrate_package, default_text
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO

TINY = [name for name in ZOO if name.endswith("-tiny")]  # one per family, new families included
_PACKAGES: dict = {}
_TABLES: dict = {}


@pytest.fixture(scope="session")
def fp_package(tmp_path_factory):
    """fp_package(name) -> an FP32 package of that zoo model (prefill chunk 16)."""

    def make(name: str):
        if name not in _PACKAGES:
            _PACKAGES[name] = export_package(LM(ZOO[name]).init_weights(), tmp_path_factory.mktemp("fp") / name,
                                             prefill_tokens=16)
        return _PACKAGES[name]

    return make


@pytest.fixture(scope="session")
def table_of(fp_package):
    """table_of(name) -> a calibration table of that package (2 streams x 256 tokens)."""

    def make(name: str):
        if name not in _TABLES:
            _TABLES[name] = calibrate_package(fp_package(name), default_text(), streams=2, tokens=256)
        return _TABLES[name]

    return make
