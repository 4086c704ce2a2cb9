"""A tiny Hugging Face chat checkpoint with real-looking conventions, made with transformers' and tokenizers'
own classes: LFM2 (a short-convolution layer and a full-attention one), a trained byte-level BPE with
ChatML's special tokens, a BOS its post-processor adds, tokenizer_config.json with a ChatML template
(LFM2's form: system prompt via a namespace, tojson for non-text content, raise_exception on an unknown
role) and a generation_config.json."""
import json
from pathlib import Path

SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD, BOS, EOT, IM_START, IM_END = range(5)
CHATML = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system_prompt='') -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set ns.system_prompt = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- if ns.system_prompt -%}{{- '<|im_start|>system\\n' + ns.system_prompt + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown role: ' + message['role']) -}}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- set content = message['content'] -%}"
    "{%- if content is not string -%}{%- set content = content | tojson -%}{%- endif -%}"
    "{{- content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. "
        "Hello there, how are you? Fine, thanks. Answer briefly. What is the capital of France? Paris. ") * 30
GENERATION = {"bos_token_id": BOS, "eos_token_id": [IM_END, EOT], "pad_token_id": PAD, "do_sample": True,
              "temperature": 0.7, "top_p": 0.9}
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
                    "eos_token": {"content": "<|im_end|>", "special": True, "__type": "AddedToken"},
                    "pad_token": "<|pad|>", "chat_template": CHATML, "model_max_length": 4096}


def make_checkpoint(path: Path, *, generation: dict | None = GENERATION, tokenizer_config: dict | None = TOKENIZER_CONFIG,
                    template_file: str | None = None) -> Path:
    """Write the checkpoint into `path`; `template_file` puts a template in chat_template.jinja (transformers 5's
    form) and drops tokenizer_config.json's; None for `generation` / `tokenizer_config` leaves that file out."""
    import tokenizers
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([TEXT], tokenizers.trainers.BpeTrainer(
        vocab_size=360, special_tokens=SPECIALS, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", BOS)])
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    model = transformers.Lfm2ForCausalLM(transformers.Lfm2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"], conv_L_cache=3,
        max_position_embeddings=256, bos_token_id=BOS, eos_token_id=IM_END, pad_token_id=PAD))
    model.save_pretrained(path)
    (path / "generation_config.json").unlink(missing_ok=True)
    if generation is not None:
        (path / "generation_config.json").write_text(json.dumps(generation))
    if tokenizer_config is not None:
        config = dict(tokenizer_config)
        if template_file is not None:
            config.pop("chat_template", None)
            (path / "chat_template.jinja").write_text(template_file)
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def export_checkpoint(path: Path, out: Path, **kw) -> Path:
    """The checkpoint exported the way `edgelin export` does (its conventions read), prefill chunk 8,
    full attention capped at 64 tokens."""
    from edgelin.exporters.package import export_package
    from edgelin.models.loading import load_model

    loaded = load_model(str(path), max_context=64)
    return export_package(loaded.model, out, prefill_tokens=8, source_layout=loaded.source_layout,
                          tokenizer_json=loaded.tokenizer_json, special_tokens=loaded.special_tokens,
                          generation=loaded.generation, **kw)


_BUILT: dict = {}


def chat_package(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, package) of the default checkpoint, made once per test session; read only."""
    base = tmp_path_factory.getbasetemp()
    if base not in _BUILT:
        checkpoint = make_checkpoint(base / "hf-chat-checkpoint")
        _BUILT[base] = checkpoint, export_checkpoint(checkpoint, base / "hf-chat-package")
    return _BUILT[base]
