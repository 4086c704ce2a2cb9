"""Every bad input: one clear error line, exit code 2, and nothing half-written left behind."""
import json
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import assert_user_error, run
from edgelin.models import LM, ZOO, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(LM(ZOO["gla-tiny"]).init_weights(), tmp_path_factory.mktemp("ckpt") / "gla")


@pytest.fixture(scope="module")
def package(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("pkg") / "gla"
    result = run("export", checkpoint, "-o", out, "--prefill-tokens", "8")
    assert result.exit_code == 0, result.output
    return out


def nothing_left(parent, name):
    return not any(p.name.startswith(name) or p.name.startswith(f".{name}") for p in parent.iterdir())


def test_missing_safetensors(tmp_path, checkpoint):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.json").write_text((checkpoint / "config.json").read_text())
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), "missing weights")
    assert nothing_left(tmp_path, "out")


def test_corrupt_safetensors(tmp_path, checkpoint):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.json").write_text((checkpoint / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), "corrupt safetensors")
    assert nothing_left(tmp_path, "out")


def bad_checkpoint(tmp_path, checkpoint, **changes):
    """A copy of `checkpoint` with `changes` to the fields of its config.json."""
    bad = tmp_path / "ckpt"
    bad.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **changes}))
    (bad / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    return bad


def test_unknown_mixer(tmp_path, checkpoint):
    bad = bad_checkpoint(tmp_path, checkpoint, pattern=["gla", "transformer_xl"])
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), "unknown token mixer 'transformer_xl'")
    assert nothing_left(tmp_path, "out")


def gla(**options):
    return {"mixers": {"gla": {"use_short_conv": True, **options}}}


@pytest.mark.parametrize("changes, fragments", [
    (gla(feature_map="nope"), ["unknown feature map 'nope'"]),
    (gla(expand_k="x"), ["option 'expand_k' of mixer 'gla'", "positive number", "'x'"]),
    (gla(expand_k=0), ["option 'expand_k' of mixer 'gla'", "got 0"]),
    (gla(conv_size=-3), ["option 'conv_size' of mixer 'gla'", "integer >= 1", "-3"]),
    (gla(conv_size=1), ["mixer 'gla' in layer 0", "kernel"]),  # the layer's own check
    (gla(gate_low_rank_dim=0), ["option 'gate_low_rank_dim' of mixer 'gla'", "got 0"]),
    (gla(gate_low_rank_dim=True), ["option 'gate_low_rank_dim'", "got True"]),
    (gla(use_short_conv="no"), ["option 'use_short_conv' of mixer 'gla'", "true or false"]),
    (gla(norm_eps=-1e-5), ["option 'norm_eps' of mixer 'gla'", ">= 0"]),
    (gla(clamp_min="low"), ["option 'clamp_min' of mixer 'gla'", "or null"]),
    ({"mixers": {"gla": 3}}, ["mixers must map"]),
    ({"pattern": "gla"}, ["pattern must be a non-empty list"]),
    ({"d_ff": -2}, ["d_ff must be an integer >= -1"]),
    ({"norm_eps": 0}, ["norm_eps must be a positive number"]),
    ({"init_std": "big"}, ["init_std must be a positive number"]),
    ({"tie_embeddings": "no"}, ["tie_embeddings must be true or false"]),
    ({"seed": 1.5}, ["seed must be an integer"]),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_config_value_in_checkpoint(tmp_path, checkpoint, changes, fragments):
    bad = bad_checkpoint(tmp_path, checkpoint, **changes)
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), *fragments)
    assert nothing_left(tmp_path, "out")


def test_train_config_with_bad_mixer_option(tmp_path, checkpoint):
    bad = bad_checkpoint(tmp_path, checkpoint, **gla(expand_v=-1))
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    result = run("train", "--text", text, "--config", bad / "config.json", "-o", tmp_path / "out", "--steps", "1")
    assert_user_error(result, "option 'expand_v' of mixer 'gla'", "-1")
    assert nothing_left(tmp_path, "out")


def test_unknown_model_name(tmp_path):
    assert_user_error(run("export", "no-such-model", "-o", tmp_path / "out"), "unknown model")


def test_checksum_mismatch(tmp_path, package):
    copy = tmp_path / "pkg"
    subprocess.run(["cp", "-r", str(package), str(copy)], check=True)
    data = bytearray((copy / "decode.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "decode.onnx").write_bytes(bytes(data))
    assert_user_error(run("generate", copy, "--prompt", "hi"), "checksum mismatch", "decode.onnx")
    assert_user_error(run("inspect", copy), "checksum mismatch")


def test_token_id_out_of_vocab(package):
    assert_user_error(run("generate", package, "--ids", "1,2,256"), "256", "vocabulary")


def test_empty_prompt(package):
    assert_user_error(run("generate", package, "--prompt", ""), "empty")


def test_existing_output_without_force(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(run("export", checkpoint, "-o", out), "exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_a_package(tmp_path, checkpoint):
    out = tmp_path / "out"
    assert run("export", checkpoint, "-o", out, "--prefill-tokens", "4").exit_code == 0
    assert run("export", checkpoint, "-o", out, "--prefill-tokens", "4", "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_generate_and_inspect_work(package):
    result = run("generate", package, "--prompt", "ROMEO:", "--max-new-tokens", "5", "--temperature", "0")
    assert result.exit_code == 0, result.output
    result = run("inspect", package, "--json")
    info = json.loads(result.output)
    assert info["states"][0]["name"] == "past_key_values.0.recurrent_state"
    assert set(info["graphs"]) == {"decode", "prefill", "verify"}


def test_runtime_generates_a_real_package_without_torch(package):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        from edgelin.runtime import Session, generate, load_tokenizer
        s = Session({str(package)!r})
        tokens = list(generate(s, load_tokenizer({str(package)!r}, s.manifest).encode("ROMEO:"), 16, seed=0))
        assert len(tokens) == 16
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("budget", ["-1", "0", "nan", "inf"])
def test_max_loss_increase_must_be_a_finite_positive_budget(tmp_path, budget):
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    fp = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "fp", prefill_tokens=16)
    result = run("quantize", fp, "--int8", "--max-loss-increase", budget, "-o", tmp_path / "q")
    assert_user_error(result, "--max-loss-increase")
    assert not (tmp_path / "q").exists()
