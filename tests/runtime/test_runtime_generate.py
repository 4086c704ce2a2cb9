"""Streaming generation, state snapshots and tokenizers against the toy package."""

import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import (
    ByteTokenizer, SamplingConfig, Session, generate, generate_text, load_state, load_tokenizer, read_package,
    save_state, write_package,
)
from conftest import toy_manifest, toy_reference

SAMPLED = SamplingConfig(temperature=1.0, top_k=20, top_p=0.95)


def test_greedy_matches_reference(session):
    prompt = [72, 101, 108, 108, 111, 33]  # 6 tokens: one prefill chunk + 2 decode steps
    out = list(generate(session, prompt, 5))
    ids = list(prompt)
    for _ in range(5):
        ids.append(int(toy_reference(np.array([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]


def test_sampled_generation_is_seeded(session):
    a = list(generate(session, [1, 2, 3], 12, SAMPLED, seed=5))
    assert a == list(generate(session, [1, 2, 3], 12, SAMPLED, seed=5))
    assert a != list(generate(session, [1, 2, 3], 12, SAMPLED, seed=6))


def test_snapshot_round_trip(session, tmp_path):
    g = generate(session, list(b"snapshot me"), 6, SAMPLED, seed=1)
    first = list(g)
    path = save_state(tmp_path / "s.npz", g.state, session.manifest)
    live = list(generate(session, g.pending, 8, SAMPLED, seed=2, state=g.state))
    restored = load_state(path, session.manifest)
    assert list(generate(session, g.pending, 8, SAMPLED, seed=2, state=restored)) == live
    whole = list(generate(session, list(b"snapshot me") + first, 1))  # state + pending == everything so far
    assert whole == list(generate(session, g.pending, 1, state=restored))
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_snapshot_refused_for_other_layout(session, tmp_path, toy_files):
    path = save_state(tmp_path / "s.npz", session.new_state(1), session.manifest)
    states = [dict(s) for s in toy_manifest()["states"]]
    states[0]["shape"] = ["batch", 9]
    other = write_package(tmp_path / "other", toy_files, toy_manifest(states=states))
    with pytest.raises(EdgelinError, match="saved for a different model"):
        load_state(path, read_package(other))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EdgelinError, match="not a readable state snapshot"):
        load_state(tmp_path / "junk.npz", session.manifest)
    with pytest.raises(EdgelinError, match="does not exist"):
        load_state(tmp_path / "absent.npz", session.manifest)


def test_prompt_errors(session):
    with pytest.raises(EdgelinError, match="prompt is empty"):
        generate(session, [], 3)
    with pytest.raises(EdgelinError, match="token id 300 is outside the vocabulary \\[0, 256\\)"):
        generate(session, [1, 300], 3)
    with pytest.raises(EdgelinError, match="prompt is empty"):
        generate_text(session, ByteTokenizer(), "", 3)


def test_stop_ids_and_zero_tokens(session):
    first = next(iter(generate(session, [65], 5)))
    assert list(generate(session, [65], 5, stop_ids={first})) == []
    assert list(generate(session, [65], 0)) == []


def test_text_streaming_whole_characters(session):
    tok = load_tokenizer(session.package_dir, session.manifest)
    pieces = list(generate_text(session, tok, "héllo wörld", 24, SAMPLED, seed=3))
    ids = list(generate(session, tok.encode("héllo wörld"), 24, SAMPLED, seed=3))
    assert "".join(pieces) == tok.decode(ids)
    assert len(pieces) > 1


def test_byte_stream_decoder_holds_back_partial_utf8():
    dec = ByteTokenizer().stream_decoder()
    out = [dec.push(b) for b in "aé€😀".encode()]
    assert out == ["a", "", "é", "", "", "€", "", "", "", "😀"]
    assert dec.push(0xE2) == "" and dec.flush() == "\ufffd"


def test_tokenizers_library_wrapper(tmp_path, toy_files):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "h": 3}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tk.decoder = tokenizers.decoders.WordPiece()
    pkg = write_package(tmp_path / "p", {**toy_files, "tokenizer.json": tk.to_str().encode()},
                        toy_manifest(tokenizer={"type": "tokenizers", "file": "tokenizer.json"}))
    session = Session(pkg)
    tok = load_tokenizer(pkg, session.manifest)
    assert tok.encode("hello world") == [1, 2] and tok.decode([1, 2]) == "hello world"
    dec = tok.stream_decoder()
    assert "".join(dec.push(t) for t in [1, 2, 1]) + dec.flush() == "hello world hello"
    assert list(generate(session, tok.encode("hello"), 3)) == list(generate(session, [1], 3))


def test_unknown_tokenizer_type(session):
    m = session.manifest
    m2 = type(m)(**{**m.__dict__, "tokenizer": {"type": "sentencepiece"}})
    with pytest.raises(EdgelinError, match="unknown tokenizer type 'sentencepiece'"):
        load_tokenizer(session.package_dir, m2)
