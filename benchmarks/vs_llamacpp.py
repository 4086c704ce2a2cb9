"""edgelin against llama.cpp on the same Hugging Face checkpoint: decode, prefill, first token, load, memory, size.

    .venv/bin/python benchmarks/vs_llamacpp.py [--models mamba2-130m lfm2-350m mamba-130m] [--rounds 3]
        [--threads 2] [--work out/vs-llamacpp] [--out out/vs-llamacpp] [--small] [--llama-sdist FILE]

Checkpoints are random-init transformers models with the real shapes (Mamba2Config, MambaConfig,
Lfm2Config; `--small` for tiny shapes), saved with save_pretrained plus a GPT-2 BPE tokenizer.json
rebuilt from llama.cpp's own ggml-vocab-gpt-2.gguf, so llama.cpp's converter recognises it. Both
engines then convert that one directory as a user would:

- llama.cpp: `convert_hf_to_gguf.py --outtype f32` (from the llama-cpp-python sdist: --llama-sdist,
  else `pip download` of the installed version), then Q8_0 and Q4_0 by `llama_model_quantize`;
- edgelin: `edgelin export` (FP32), `edgelin quantize --int8 --state fp32` and `--w4a8` (4-bit
  weights computed in int8, as Q4_0 is) (`--validate` keeps their validation step), `edgelin compile --backend openvino`.

Each step's wall time and peak RSS are recorded. Every timed run is a fresh process (so its peak
RSS is its own) on --threads threads: load, a 16-token prompt to the first greedy token (time to
first token), 8 warm-up and --decode-tokens timed greedy decode steps (tok/s = 1 / median step),
then prefill of --prefill-tokens tokens from an empty state (best of two, last-position logits
only). Runs are interleaved (edgelin ort, edgelin openvino-stateful, llama.cpp, the order reversed
every other round) for --rounds rounds; absolute figures are medians over rounds, ratios the median
of the per-round ratios. The FP32 greedy tokens of both engines are compared with transformers'.
gla-130m and gla-10m (edgelin zoo, no llama.cpp equivalent) are compared with edgelin's own FP32.
Prints one markdown table and writes everything to OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PRECISIONS = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_0"}  # edgelin precision -> llama.cpp type
ENGINES = ["ort", "openvino-stateful", "llama.cpp"]
AGREE_TOKENS = 8
PROMPT = list(range(1000, 1016))  # the 16-token decode prompt: ordinary GPT-2 BPE ids
TOKENIZER_VOCAB = 50257  # the GPT-2 BPE vocab every HF checkpoint here ships
LLAMA_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-gpt-2.gguf")
LFM2_350M_LAYERS = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv",
                    "full_attention", "conv", "full_attention", "conv", "full_attention", "conv", "full_attention",
                    "conv"]


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a transformers class with its real and its --small shapes, or an edgelin zoo name."""
    label: str
    hf_class: str | None = None  # transformers ...ForCausalLM; None: edgelin zoo model, no llama.cpp side
    config: dict[str, Any] = field(default_factory=dict)
    small: dict[str, Any] = field(default_factory=dict)
    zoo_small: str | None = None


MODELS = {
    "mamba2-130m": ModelSpec(
        "Mamba2-130M", "Mamba2", dict(vocab_size=50288, hidden_size=768, num_hidden_layers=24, state_size=128,
                                      head_dim=64, num_heads=24, expand=2, n_groups=1, conv_kernel=4,
                                      tie_word_embeddings=True),
        dict(vocab_size=50288, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8,
             expand=2, n_groups=1, conv_kernel=4, chunk_size=16, tie_word_embeddings=True)),
    "mamba-130m": ModelSpec(
        "Mamba-130M", "Mamba", dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16,
                                    expand=2, conv_kernel=4, tie_word_embeddings=True),
        dict(vocab_size=50280, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4,
             tie_word_embeddings=True)),
    "lfm2-350m": ModelSpec(
        "LFM2-350M", "Lfm2", dict(vocab_size=65536, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
                                  num_key_value_heads=8, intermediate_size=6656, layer_types=LFM2_350M_LAYERS,
                                  conv_L_cache=3, norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=128000,
                                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=7, pad_token_id=0),
        dict(vocab_size=65536, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=192, layer_types=["conv", "full_attention", "conv", "full_attention"],
             norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=True)),
    "gla-130m": ModelSpec("GLA-130M (zoo)", zoo_small="gla-tiny"),
    "gla-10m": ModelSpec("gla-10m (trained)", zoo_small="gla-tiny"),
}


# ---------------------------------------------------------------- checkpoints and llama.cpp's converter

def llama_tree(work: Path, sdist: Path | None) -> Path:
    """llama.cpp's converter, gguf-py and vocab files, extracted from the llama-cpp-python sdist into WORK."""
    tree = work / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").exists():
        return tree
    if sdist is None:
        import llama_cpp

        down = work / "sdist"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(down),
                        f"llama-cpp-python=={llama_cpp.__version__}"], check=True, capture_output=True)
        sdist = next(down.glob("llama_cpp_python-*.tar.gz"))
    part = tree.with_suffix(".part")
    shutil.rmtree(part, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
            if rel and m.isfile() and rel.startswith(LLAMA_MEMBERS):
                m.name = rel
                tar.extract(m, part, filter="data")
    part.rename(tree)
    return tree


@dataclass(frozen=True)
class Vocab:
    """A byte-level BPE vocabulary: tokens in id order, merges ("a b"), special tokens."""
    tokens: list[str]
    merges: list[str]
    special: list[str]


def read_vocab(vocab_gguf: Path) -> Vocab:
    """The BPE vocabulary stored in one of llama.cpp's ggml-vocab-*.gguf files (read with its gguf-py)."""
    sys.path.insert(0, str(vocab_gguf.parents[1] / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(vocab_gguf)

    def strings(key: str) -> list[str]:
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    kinds = reader.fields["tokenizer.ggml.token_type"]
    special = [t for t, i in zip(tokens, kinds.data) if int(kinds.parts[i][0]) == gguf.TokenType.CONTROL]
    return Vocab(tokens, strings("tokenizer.ggml.merges"), special)


def write_tokenizer(directory: Path, vocab: Vocab) -> None:
    """tokenizer.json + tokenizer_config.json: a GPT-2 style byte-level BPE tokenizer of `vocab`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ")) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab.tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in vocab.special])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": vocab.special[0], "eos_token": vocab.special[0]}))


def make_checkpoint(spec: ModelSpec, small: bool, directory: Path, vocab: Vocab) -> Path:
    """A seeded random-init transformers checkpoint with SPEC's shapes and `vocab`'s tokenizer, saved once
    (save_pretrained, safetensors) and reused."""
    if (directory / "tokenizer.json").exists():
        return directory
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = getattr(transformers, spec.hf_class + "Config")(**(spec.small if small else spec.config))
    model = getattr(transformers, spec.hf_class + "ForCausalLM")(config).eval()
    part = directory.with_name(directory.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    model.save_pretrained(part)
    write_tokenizer(part, vocab)
    part.rename(directory)
    return directory


def transformers_tokens(checkpoint: Path, prompt: list[int], n: int) -> list[int]:
    """Transformers' FP32 greedy continuation of `prompt` (the reference both engines are held to)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


# ---------------------------------------------------------------- conversions, timed

WRAP = """import json, os, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[2], "w") as log:
    child = subprocess.Popen(sys.argv[3:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
json.dump({"seconds": time.perf_counter() - start, "peak_rss_bytes": usage.ru_maxrss * 1024,
           "returncode": os.waitstatus_to_exitcode(status)}, open(sys.argv[1], "w"))
"""


def timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run `cmd` (output to `log`): wall seconds and its own peak RSS, measured from a small wrapper process
    (ru_maxrss survives exec, so this large parent must not be the one that forks the command)."""
    record = log.with_suffix(".json")
    subprocess.run([sys.executable, "-c", WRAP, str(record), str(log), *map(str, cmd)], check=True)
    result = json.loads(record.read_text())
    if result["returncode"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} failed: {' | '.join(tail)[-400:]}")
    return result


QUANTIZE = """import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def llama_steps(checkpoint: Path, out: Path, tree: Path, threads: int) -> dict[str, tuple[list[str], Path]]:
    """llama.cpp's conversion, {step: (command, output)}: the F32 GGUF, then Q8_0 and Q4_0 from it."""
    f32 = out / "model-f32.gguf"
    steps = {"convert fp32": ([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype",
                               "f32", "--outfile", str(f32)], f32)}
    for prec in ("int8", "int4"):
        gguf = out / f"model-{PRECISIONS[prec].lower()}.gguf"
        steps[f"quantize {prec}"] = ([sys.executable, "-c", QUANTIZE, str(f32), str(gguf), PRECISIONS[prec],
                                      str(threads)], gguf)
    return steps


def edgelin_steps(source: str, out: Path, validate: bool) -> dict[str, tuple[list[str], Path]]:
    """The edgelin CLI, {step: (command, package)}: export, quantize, compile for OpenVINO."""
    cli = [sys.executable, "-m", "edgelin"]
    fp32, no_val = out / "fp32", [] if validate else ["--no-validate"]
    steps = {"export fp32": ([*cli, "export", source, "-o", str(fp32), "--force"], fp32)}
    for prec, flags in (("int8", ["--int8", "--state", "fp32"]), ("int4", ["--w4a8"])):
        steps[f"quantize {prec}"] = ([*cli, "quantize", str(fp32), *flags, *no_val, "-o", str(out / prec),
                                     "--force"], out / prec)
    for prec in PRECISIONS:
        steps[f"compile {prec}"] = ([*cli, "compile", str(out / prec), "--backend", "openvino"], out / prec)
    return steps


def chain(engine: str, prec: str) -> list[str]:
    """The conversion steps (keys of the conversion records) that produce what `engine` runs at `prec`."""
    if engine == "llama.cpp":
        return ["llama.cpp convert fp32"] + ([f"llama.cpp quantize {prec}"] if prec != "fp32" else [])
    steps = ["edgelin export fp32"] + ([f"edgelin quantize {prec}"] if prec != "fp32" else [])
    return steps + ([f"edgelin compile {prec}"] if engine == "openvino-stateful" else [])


def targets_and_costs(records: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    """From one model's conversion records: {precision: {engine: path}} for every chain that succeeded,
    and {"precision engine": {seconds, peak_rss_bytes, steps}} (a chain's seconds add up, its peak is the max)."""
    targets: dict[str, dict[str, str]] = {}
    costs: dict[str, dict] = {}
    for prec in PRECISIONS:
        for engine in ENGINES:
            steps = [records.get(k) for k in chain(engine, prec)]
            if not all(s and "error" not in s for s in steps):
                continue
            targets.setdefault(prec, {})[engine] = steps[-1]["output"]
            costs[f"{prec} {engine}"] = {"seconds": sum(s["seconds"] for s in steps),
                                         "peak_rss_bytes": max(s["peak_rss_bytes"] for s in steps),
                                         "steps": [s["command"] for s in steps]}
    return targets, costs


def convert_all(name: str, source: str, root: Path, tree: Path | None, args: argparse.Namespace,
                advance: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Run (or reuse from ROOT/conversions.json) both engines' conversion steps of one model:
    {"engine step precision": {command, output, seconds, peak_rss_bytes} or {..., error}}."""
    done_path = root / "conversions.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    plans = {"edgelin": edgelin_steps(source, root / "edgelin", args.validate)}
    if tree is not None:
        plans["llama.cpp"] = llama_steps(Path(source), root / "llama.cpp", tree, args.threads)
    for engine, steps in plans.items():
        (root / engine).mkdir(parents=True, exist_ok=True)
        for step, (cmd, output) in steps.items():
            key = f"{engine} {step}"
            if step.split()[-1] not in args.precisions and step not in ("export fp32", "convert fp32"):
                continue
            advance(f"{name}: {key}")
            if key in done and "error" not in done[key]:
                continue
            shown = cmd[2:] if engine == "edgelin" else cmd  # "edgelin export ...", as a user types it
            record: dict[str, Any] = {"output": str(output), "command": " ".join(map(str, shown))[:300]}
            try:
                record.update(timed(cmd, root / engine / (step.replace(" ", "-") + ".log")))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                record["error"] = str(e)
            done[key] = record
            done_path.write_text(json.dumps(done, indent=1))
    return done


# ---------------------------------------------------------------- timed runs (child processes)

def peak_rss_bytes() -> int:
    """VmHWM of this process: fresh after exec, unlike ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(load: Callable[[], Any], first: Callable[[Any, list[int]], int], step: Callable[[Any, int], int],
            prefill: Callable[[Any, list[int]], None], prompt: list[int], long_prompt: list[int],
            decode_tokens: int) -> dict[str, Any]:
    """The engine-independent timing protocol (see the module docstring); the callables hide the engine."""
    start = time.perf_counter()
    engine = load()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = [first(engine, prompt)]
    ttft_s = time.perf_counter() - start
    times = []
    for _ in range(8 + decode_tokens):
        start = time.perf_counter()
        tokens.append(step(engine, tokens[-1]))
        times.append(time.perf_counter() - start)
    prefill_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        prefill(engine, long_prompt)
        prefill_s = min(prefill_s, time.perf_counter() - start)
    median = float(np.median(times[8:]))
    return {"load_s": load_s, "ttft_s": ttft_s, "decode_tokens_per_s": 1 / median, "ms_per_token_p50": median * 1e3,
            "prefill_tokens_per_s": len(long_prompt) / prefill_s, "tokens": tokens[:AGREE_TOKENS],
            "peak_rss_bytes": peak_rss_bytes()}


def run_edgelin(package: str, backend: str, threads: int, **kw) -> dict[str, Any]:
    from edgelin.runtime import Session

    box: dict[str, Any] = {}

    def feed(s, ids: list[int]) -> int:  # a generation loop: each state is given up for the next (as `generate` does)
        logits, box["state"] = s.forward(np.array([ids], np.int64), box["state"], logits="last", donate=True)
        return int(np.argmax(logits[0, -1]))

    def first(s, ids: list[int]) -> int:
        box["state"] = s.new_state(1)
        return feed(s, ids)

    def prefill(s, ids: list[int]) -> None:
        s.forward(np.array([ids], np.int64), s.new_state(1), logits="last", donate=True)

    return measure(lambda: Session(package, backend=backend, threads=threads), first, lambda s, t: feed(s, [t]),
                   prefill, **kw)


def run_llama(gguf: str, threads: int, n_ctx: int, **kw) -> dict[str, Any]:
    import llama_cpp

    def feed(llm, ids: list[int]) -> int:
        llm.eval(ids)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    def first(llm, ids: list[int]) -> int:
        llm.reset()
        return feed(llm, ids)

    def prefill(llm, ids: list[int]) -> None:
        llm.reset()
        llm.eval(ids)

    def load():
        return llama_cpp.Llama(gguf, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                               logits_all=False, verbose=False)

    return measure(load, first, lambda llm, t: feed(llm, [t]), prefill, **kw)


def child_main(spec: str) -> None:
    """One timed run in this fresh process; prints one JSON line on the real stdout."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever an engine prints goes to stderr
    kw = json.loads(spec)
    try:
        result = run_llama(**kw) if "gguf" in kw else run_edgelin(**kw)
    except Exception as e:  # reported to the parent as one line
        result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(json.dumps(result), file=out, flush=True)


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- assembly

METRICS = [  # (key, label, higher is better, scale)
    ("decode_tokens_per_s", "decode tok/s", True, 1),
    ("prefill_tokens_per_s", "prefill {prefill} tok/s", True, 1),
    ("ttft_s", "first token ms ({prompt}-token prompt)", False, 1e3),
    ("load_s", "load s", False, 1),
    ("peak_rss_bytes", "peak RSS MiB", False, 2 ** -20),
    ("size_bytes", "on disk MiB", False, 2 ** -20),
    ("convert_s", "conversion s", False, 1),
    ("convert_rss_bytes", "conversion peak RSS MiB", False, 2 ** -20),
]


def summarize(runs: list[dict[str, Any]], conversions: dict[str, dict[str, Any]], sizes: dict[str, int]) -> list[dict]:
    """One row per model x precision x metric: medians per engine, and median per-round ratios.

    Ratios are edgelin / llama.cpp (for zoo models without llama.cpp: edgelin / edgelin FP32 on the
    same back end). Conversion figures come from `conversions` (one run each), sizes from `sizes`.
    """
    rows = []
    keys = sorted({(r["model"], r["precision"]) for r in runs}, key=lambda k: (k[0], list(PRECISIONS).index(k[1])))
    for model, prec in keys:
        has_llama = any(r["engine"] == "llama.cpp" and r["model"] == model for r in runs)

        def rounds(engine: str, key: str, precision: str = prec) -> dict[int, float]:
            if key in ("size_bytes", "convert_s", "convert_rss_bytes"):
                v = (sizes if key == "size_bytes" else conversions).get(f"{model} {precision} {engine}")
                v = v if key == "size_bytes" else (v or {}).get("seconds" if key == "convert_s" else "peak_rss_bytes")
                return {} if v is None else {-1: float(v)}
            return {r["round"]: float(r[key]) for r in runs if (r["model"], r["precision"], r["engine"]) ==
                    (model, precision, engine) and key in r}

        for key, label, higher, scale in METRICS:
            row = {"model": model, "precision": prec, "metric": key, "label": label, "higher_is_better": higher,
                   "reference": "llama.cpp" if has_llama else "edgelin fp32", "values": {}, "ratios": {}}
            for engine in ENGINES:
                vals = rounds(engine, key)
                if vals:
                    row["values"][engine] = float(np.median(list(vals.values()))) * scale
            for engine in ENGINES[:2]:
                mine = rounds(engine, key)
                ref = rounds("llama.cpp", key) if has_llama else rounds(engine, key, "fp32")
                paired = [mine[k] / ref[k] for k in mine if k in ref and ref[k]]
                if paired and not (not has_llama and prec == "fp32"):
                    row["ratios"][engine] = float(np.median(paired))
            if row["values"]:
                rows.append(row)
    return rows


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def markdown(rows: list[dict], agreement: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    """The one table: absolute figures per engine and edgelin / reference ratios (ort, best edgelin)."""
    out = ["| model | precision | measure | edgelin ort | edgelin openvino-stateful | llama.cpp "
           "| ort / ref | best / ref |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        v, q = r["values"], r["ratios"]
        best_engine = None
        if q:
            pick = max if r["higher_is_better"] else min
            best_engine = pick(q, key=q.get)
        ref = "" if r["reference"] == "llama.cpp" else " (vs FP32)"
        gguf = PRECISIONS[r["precision"]] + " " if "llama.cpp" in v else ""
        out.append(f"| {labels.get(r['model'], r['model'])} | {r['precision'].upper()} | {r['label']} "
                   f"| {_fmt(v.get('ort'))} | {_fmt(v.get('openvino-stateful'))} "
                   f"| {gguf + _fmt(v.get('llama.cpp')) if 'llama.cpp' in v else '-'} "
                   f"| {_fmt(q.get('ort'))}{ref if 'ort' in q else ''} "
                   f"| {_fmt(q.get(best_engine)) + ref if best_engine else '-'} |")
    for model, a in agreement.items():
        cells = [a.get(e) for e in ENGINES]
        out.append(f"| {labels.get(model, model)} | FP32 | greedy tokens equal to transformers "
                   + "".join(f"| {c if c is not None else '-'} " for c in cells) + "| | |")
    return "\n".join(out)


def agreement(runs: list[dict[str, Any]], reference: dict[str, list[int]]) -> dict[str, dict[str, str]]:
    """Per model and engine: how many of the first FP32 greedy tokens equal transformers' (worst round)."""
    out: dict[str, dict[str, str]] = {}
    for model, ref in reference.items():
        for r in runs:
            if r["model"] == model and r["precision"] == "fp32" and "tokens" in r:
                same = sum(a == b for a, b in zip(r["tokens"], ref))
                prev = out.setdefault(model, {}).get(r["engine"])
                if prev is None or same < int(prev.split("/")[0]):
                    out[model][r["engine"]] = f"{same}/{len(ref)}"
    return out


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[4:]))
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=["mamba2-130m", "lfm2-350m", "mamba-130m"])
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (fresh process per run).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64, help="Timed decode steps per run.")
    ap.add_argument("--prefill-tokens", type=int, default=512, help="Length of the timed prefill prompt.")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context (edgelin's LFM2 --max-context is 2048).")
    ap.add_argument("--small", action="store_true", help="Tiny shapes, for a quick check.")
    ap.add_argument("--validate", action="store_true", help="Let `edgelin quantize` validate (slow, not timed "
                                                              "by llama.cpp's side either).")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=ENGINES)
    ap.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                    help="edgelin FP32 / INT8 (--int8 --state fp32) / INT4 against llama.cpp F32 / Q8_0 / Q4_0.")
    ap.add_argument("--llama-sdist", type=Path, default=None,
                    help="llama-cpp-python sdist holding convert_hf_to_gguf.py (default: pip download it).")
    ap.add_argument("--work", type=Path, default=Path("out/vs-llamacpp"), help="Checkpoints and conversions, reused.")
    ap.add_argument("--out", type=Path, default=Path("out/vs-llamacpp"), help="results.json goes here.")
    ap.add_argument("--convert-only", action="store_true", help="Build checkpoints and conversions, time nothing.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1 or args.decode_tokens < 1 or args.prefill_tokens < 1:
        ap.error("--rounds, --threads, --decode-tokens and --prefill-tokens must be at least 1")
    return args


def prepare(args: argparse.Namespace, bars, log: Callable[[str], None]) -> tuple[dict, dict, dict]:
    """Checkpoints and both engines' conversions. Returns {model: {precision: {engine: path}}},
    {"model precision engine": conversion cost} and {model: transformers' greedy tokens}."""
    root = args.work / ("small" if args.small else "full")
    hf_models = [m for m in args.models if MODELS[m].hf_class]
    tree = llama_tree(args.work, args.llama_sdist) if hf_models else None  # its vocab makes the tokenizers
    with_llama = "llama.cpp" in args.engines
    quantized = len([p for p in args.precisions if p != "fp32"])
    steps = len(args.models) * (1 + quantized + len(args.precisions)) + with_llama * len(hf_models) * (1 + quantized)
    task = bars.add_task("convert", total=steps)
    targets, costs, reference, vocab = {}, {}, {}, None
    for name in args.models:
        spec = MODELS[name]
        source = spec.zoo_small if args.small else name
        if spec.hf_class:
            bars.update(task, description=f"{name}: checkpoint")
            vocab = vocab or read_vocab(tree / "models" / "ggml-vocab-gpt-2.gguf")
            source = str(make_checkpoint(spec, args.small, root / name / "checkpoint", vocab))
        records = convert_all(name, source, root / name, tree if spec.hf_class and with_llama else None, args,
                              lambda what: bars.update(task, description=what[:40], advance=1))
        for key, record in records.items():
            if "error" in record:
                log(f"{name} {key}: {record['error']}")
        targets[name], model_costs = targets_and_costs(records)
        costs.update({f"{name} {k}": v for k, v in model_costs.items()})
        if spec.hf_class:
            ref_path = root / name / "transformers_tokens.json"
            if not ref_path.exists():
                bars.update(task, description=f"{name}: transformers reference")
                ref_path.write_text(json.dumps(transformers_tokens(Path(source), PROMPT, AGREE_TOKENS)))
            reference[name] = json.loads(ref_path.read_text())
    return targets, costs, reference


def size_on_disk(path: str, engine: str) -> int:
    """Bytes the engine loads: the GGUF; the package without its compiled back ends (ort); or the manifest,
    tokenizer and stateful OpenVINO files (openvino-stateful)."""
    p = Path(path)
    if engine == "llama.cpp":
        return p.stat().st_size
    backends = json.loads((p / "manifest.json").read_text()).get("backends") or {}
    compiled = {f for family in backends.values() for variant in family.values() for f in variant["files"]}
    files = {str(f.relative_to(p)): f.stat().st_size for f in p.rglob("*") if f.is_file()}
    if engine == "ort":
        return sum(n for name, n in files.items() if name not in compiled)
    mine = set(backends["openvino"]["stateful"]["files"])
    return sum(n for name, n in files.items() if name in mine or name == "manifest.json" or name.startswith("tokenizer"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "log": [], "runs": []}

    def log(msg: str) -> None:
        console.print(msg)
        results["log"].append(msg)

    started = time.time()
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bars:
        targets, conversions, reference = prepare(args, bars, log)
        if args.convert_only:
            return
        jobs = [(m, p, e) for m in args.models for p in args.precisions for e in ENGINES
                if e in args.engines and e in targets[m].get(p, {})]
        task = bars.add_task("timed runs", total=len(jobs) * args.rounds)
        long_prompt = np.random.default_rng(0).integers(0, TOKENIZER_VOCAB, args.prefill_tokens).tolist()
        for rnd in range(args.rounds):
            for model, prec, engine in (jobs if rnd % 2 == 0 else jobs[::-1]):
                bars.update(task, description=f"round {rnd + 1}: {model} {prec} {engine}"[:40])
                common = dict(threads=args.threads, prompt=PROMPT, long_prompt=long_prompt,
                              decode_tokens=args.decode_tokens)
                path = targets[model][prec][engine]
                job = ({"gguf": path, "n_ctx": args.n_ctx, **common} if engine == "llama.cpp"
                       else {"package": path, "backend": engine, **common})
                load = os.getloadavg()[0]
                r = {"model": model, "precision": prec, "engine": engine, "round": rnd, "load_average": load,
                     **run_child(job)}
                if "error" in r:
                    log(f"{model} {prec} {engine} round {rnd + 1}: {r['error']}")
                results["runs"].append(r)
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
                bars.advance(task)
    sizes = {f"{m} {p} {e}": size_on_disk(path, e) for m, t in targets.items() for p, es in t.items()
             for e, path in es.items()}
    ok = [r for r in results["runs"] if "error" not in r]
    results.update(conversions=conversions, sizes=sizes, transformers_tokens=reference,
                   agreement=agreement(ok, reference), summary=summarize(ok, conversions, sizes),
                   seconds=time.time() - started)
    labels = {m: MODELS[m].label + (" (small)" if args.small else "") for m in args.models}
    table = markdown(results["summary"], results["agreement"], labels)
    table = table.replace("{prefill}", str(args.prefill_tokens)).replace("{prompt}", str(len(PROMPT)))
    results["markdown"] = table
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)
    console.print(f"wrote {args.out / 'results.json'} ({results['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
