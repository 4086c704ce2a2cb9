"""Package reading and writing: checksums, format version, atomic writes, --force."""

import json

import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Manifest, package_size_bytes, read_package, write_package
from conftest import PREFILL, STATES, toy_manifest


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_read_round_trip(toy_package):
    m = read_package(toy_package)
    assert isinstance(m, Manifest) and m.vocab_size == 256
    assert m.graphs["prefill"].tokens == PREFILL and m.graphs["decode"].tokens == 1
    assert [s.input for s in m.states] == [s["input"] for s in STATES]
    assert m.states[1].shape_for(3) == (3, 2, 8) and m.states[0].kind == "recurrent_state"
    assert set(m.files) == {"decode.onnx", "prefill.onnx"}
    assert package_size_bytes(toy_package) > sum((toy_package / f).stat().st_size for f in m.files)


def test_checksum_mismatch_refused(fresh_package):
    with open(fresh_package / "decode.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgelinError, match=f"checksum mismatch for decode.onnx in {fresh_package}"):
        read_package(fresh_package)


def test_missing_and_extra_files_refused(fresh_package):
    (fresh_package / "notes.txt").write_text("hi")
    with pytest.raises(EdgelinError, match="not listed in manifest.json: notes.txt"):
        read_package(fresh_package)
    (fresh_package / "notes.txt").unlink()
    (fresh_package / "prefill.onnx").unlink()
    with pytest.raises(EdgelinError, match="missing prefill.onnx"):
        read_package(fresh_package)


@pytest.mark.parametrize("version", [3, 0, "1", True, None])
def test_unknown_format_version_refused(fresh_package, version):
    doc = json.loads((fresh_package / "manifest.json").read_text())
    doc["format_version"] = version
    (fresh_package / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(EdgelinError, match="format version .* this edgelin reads versions 1, 2"):
        read_package(fresh_package)


def test_not_a_package(tmp_path):
    with pytest.raises(EdgelinError, match="no manifest.json"):
        read_package(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(EdgelinError, match="not valid JSON"):
        read_package(tmp_path)


def test_write_refuses_existing_then_force_replaces(tmp_path, toy_files):
    out = write_package(tmp_path / "pkg", toy_files, toy_manifest())
    with pytest.raises(EdgelinError, match="exists; pass --force to overwrite"):
        write_package(out, toy_files, toy_manifest())
    files = {**toy_files, "report/notes.md": b"# report\n"}
    write_package(out, files, toy_manifest(producer="second"), force=True)
    m = read_package(out)
    assert m.producer == "second" and "report/notes.md" in m.files
    assert _leftovers(tmp_path, "pkg") == []


def test_force_refuses_non_package_dir(tmp_path, toy_files):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    with pytest.raises(EdgelinError, match="not a model package"):
        write_package(tmp_path / "home", toy_files, toy_manifest(), force=True)
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("case", ["missing_source", "bad_manifest", "bad_name"])
def test_failed_write_leaves_nothing(tmp_path, toy_files, case):
    files, manifest = dict(toy_files), toy_manifest()
    if case == "missing_source":
        files["tokenizer.json"] = tmp_path / "nope.json"
    elif case == "bad_manifest":
        manifest["graphs"] = {"decode": {"file": "absent.onnx", "tokens": 1}}
    else:
        files["../escape.onnx"] = b"x"
    with pytest.raises(EdgelinError):
        write_package(tmp_path / "pkg", files, manifest)
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_write_keeps_old_package(tmp_path, toy_files):
    out = write_package(tmp_path / "pkg", toy_files, toy_manifest())
    with pytest.raises(EdgelinError):
        write_package(out, {**toy_files, "x.bin": tmp_path / "nope"}, toy_manifest(), force=True)
    assert read_package(out).producer == "edgelin tests"
    assert _leftovers(tmp_path, "pkg") == []
