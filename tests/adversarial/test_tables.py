"""Calibration tables from strangers (`edgelin quantize --table`): every bad one is one EdgelinError."""
import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgelin.calibration import calibrate_package, default_text
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError


@pytest.fixture(scope="module")
def table_doc(pkg):
    return calibrate_package(pkg, default_text()[:4000], streams=1, tokens=64).to_dict()


def first(doc):
    """(graph, tensor name) of the first entry."""
    g = next(iter(doc["graphs"]))
    return g, next(iter(doc["graphs"][g]))


def load_doc(tmp_path, doc):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, (str, bytes)) else doc) if not isinstance(doc, bytes) \
        else path.write_bytes(doc)
    return CalibrationTable.load(path)


EDITS = [
    ("role", "weights"), ("role", None), ("min", "0"), ("min", float("nan")), ("max", float("inf")), ("min", 10.0),
    ("max", None), ("min", True), ("ranges", []), ("ranges", {"magic": [0, 1]}), ("ranges", {"minmax": [0]}),
    ("ranges", {"minmax": [1, 0]}), ("ranges", {"minmax": [0, "1"]}), ("ranges", {"minmax": [0, 1, 2]}),
    ("ranges", {"minmax": {"lo": 0}}), ("channel_absmax", [-1.0]), ("channel_absmax", ["x"]), ("channel_absmax", 3),
]


@pytest.mark.parametrize("key, value", EDITS, ids=[f"{k}={v!r}" for k, v in EDITS])
def test_bad_entry(table_doc, tmp_path, key, value):
    doc = copy.deepcopy(table_doc)
    g, name = first(doc)
    doc["graphs"][g][name][key] = value
    with pytest.raises(EdgelinError, match="calibration table"):
        load_doc(tmp_path, doc)


@pytest.mark.parametrize("doc", [
    {"version": 1, "graphs": []}, {"version": 1}, {"version": "1", "graphs": {}}, {"version": 1, "graphs": {"decode": []}},
    {"version": 1, "graphs": {"decode": {"x": 5}}}, {"version": 1, "graphs": {}, "meta": []}, [], None, 5,
    '{"version": 1, "graphs": {', "[" * 100000, b"\xff\xfe", "",
], ids=lambda d: repr(d)[:30])
def test_bad_document(tmp_path, doc):
    with pytest.raises(EdgelinError):
        load_doc(tmp_path, doc)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_not_a_file(tmp_path, kind):
    path = tmp_path / "t.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(EdgelinError):
        CalibrationTable.load(path)


def test_pristine_table_loads(table_doc, tmp_path):
    assert load_doc(tmp_path, table_doc).graphs == table_doc["graphs"]


def test_table_of_another_package_is_one_error(table_doc, pkg, tmp_path):
    """Names the package does not have: the quantizer says which tensor has no range."""
    from edgelin.quantize.package import quantize_package
    from edgelin.quantize.schemes import W8A8

    doc = copy.deepcopy(table_doc)
    for g in doc["graphs"]:
        doc["graphs"][g] = {f"other.{k}": v for k, v in doc["graphs"][g].items()}
    with pytest.raises(EdgelinError, match="no range"):
        quantize_package(pkg, tmp_path / "q", W8A8(), load_doc(tmp_path, doc))
    assert not (tmp_path / "q").exists()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["role", "min", "max", "ranges", "channel_absmax", "count"]), value=JSON)
def test_fuzz_entry(table_doc, tmp_path_factory, key, value):
    doc = copy.deepcopy(table_doc)
    g, name = first(doc)
    doc["graphs"][g][name][key] = value
    try:
        load_doc(tmp_path_factory.mktemp("fuzz"), doc)
    except EdgelinError:
        pass
