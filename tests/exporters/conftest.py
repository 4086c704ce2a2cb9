"""Tiny imported models for the GenAI layout tests: transformers' own classes, a trained byte-level BPE."""
import pytest

from edgelin.exporters.package import export_package
from quant_helpers import fp_package, table_of  # noqa: F401  (shared fixtures: the verify graph tests)

PREFILL = 8
IMPORTED = {  # tiny transformers models of the imported families
    "mamba": lambda t, vocab: t.MambaForCausalLM(t.MambaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "mamba2": lambda t, vocab: t.Mamba2ForCausalLM(t.Mamba2Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=8,
        n_groups=1, expand=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
    "lfm2": lambda t, vocab: t.Lfm2ForCausalLM(t.Lfm2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["conv", "full_attention", "conv", "full_attention"], conv_L_cache=3,
        max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0)),
}


@pytest.fixture(scope="module", params=sorted(IMPORTED))
def imported(request, tmp_path_factory):
    """A tiny transformers model with a trained byte-level BPE tokenizer (end token <|endoftext|>), exported.
    LFM2's full attention becomes a KV cache capped at 64 tokens (`max_context`)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    from edgelin.models.loading import load_model

    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 40
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([text], tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    hf = IMPORTED[request.param](transformers, tok.get_vocab_size())
    checkpoint = tmp_path_factory.mktemp("hf") / request.param
    hf.save_pretrained(checkpoint)
    tok.save(str(checkpoint / "tokenizer.json"))
    loaded = load_model(str(checkpoint), max_context=64)
    return export_package(loaded.model, tmp_path_factory.mktemp("pkg") / request.param, prefill_tokens=PREFILL,
                          source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json,
                          special_tokens=loaded.special_tokens)
