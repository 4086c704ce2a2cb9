"""`edgelin export ORG/NAME` from the local Hugging Face cache, laid out as huggingface_hub lays it out
(refs/, snapshots/<commit>/ with links into blobs/), offline."""
import hashlib
import os
from pathlib import Path

import pytest
import torch

from cli_helpers import run
from edgelin.errors import EdgelinError
from edgelin.models.hub_cache import hub_cache_dir
from edgelin.models.loading import load_model

transformers = pytest.importorskip("transformers")

MAIN, OLD = "a" * 40, "b" * 40


def cache_repo(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main") -> Path:
    """Add `files` as snapshot `commit` of `repo_id` to the cache, each a link into blobs/ as the hub does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


def mamba_files(tmp_path: Path, layers: int) -> dict[str, bytes]:
    torch.manual_seed(layers)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=layers, state_size=4, expand=2, conv_kernel=4))
    out = tmp_path / f"src{layers}"
    model.save_pretrained(out)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An HF_HOME holding acme/tiny-mamba at main (2 layers) and at an older commit (1 layer) tagged v0."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cache = tmp_path / "hf" / "hub"
    cache_repo(cache, "acme/tiny-mamba", MAIN, mamba_files(tmp_path, 2))
    cache_repo(cache, "acme/tiny-mamba", OLD, mamba_files(tmp_path, 1), ref="v0")
    monkeypatch.chdir(tmp_path)
    return cache


def test_cache_dir_follows_the_hub_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


@pytest.mark.parametrize("revision, layers", [(None, 2), ("main", 2), ("v0", 1), (OLD, 1), (MAIN, 2)])
def test_hub_id_resolves_to_its_snapshot(hub, revision, layers):
    loaded = load_model("acme/tiny-mamba", revision=revision)
    assert loaded.name == "tiny-mamba" and loaded.source_layout == "hf-mamba"
    assert loaded.model.config.n_layers == layers


@pytest.mark.parametrize("spec, revision, fragment", [
    ("acme/absent", None, "neither a directory nor in the local Hugging Face cache"),
    ("acme/tiny-mamba", "dev", "no revision 'dev'"),
    ("acme/tiny-mamba", "c" * 40, "not in the local cache"),
    ("acme/tiny-mamba", "../../etc", "--revision must be"),
    ("acme/tiny-mamba", "", "--revision must be"),
    ("gla-tiny", "main", "--revision goes with"),
])
def test_hub_errors(hub, spec, revision, fragment):
    with pytest.raises(EdgelinError, match=fragment.replace("(", r"\(")):
        load_model(spec, revision=revision)


def test_a_ref_that_is_not_a_commit(hub):
    (hub / "models--acme--tiny-mamba" / "refs" / "main").write_text("not a hash")
    with pytest.raises(EdgelinError, match="does not hold a commit hash"):
        load_model("acme/tiny-mamba")


def test_a_local_directory_wins_over_the_cache(hub, tmp_path):
    local = tmp_path / "acme" / "tiny-mamba"
    local.parent.mkdir()
    local.symlink_to(hub / "models--acme--tiny-mamba" / "snapshots" / OLD)
    assert load_model("acme/tiny-mamba").model.config.n_layers == 1


def test_export_cli_from_the_cache(hub, tmp_path):
    r = run("export", "acme/tiny-mamba", "--revision", "v0", "-o", tmp_path / "pkg")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pkg" / "manifest.json").is_file()
