"""Run a reference and a candidate package side by side over the same text and measure the gap.

Both run through `edgelin.runtime.Session` (any back end); the text is cut into parallel streams
of up to `horizon` tokens, states carried, so the drift curve reaches far into the recurrence.
"""
from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgelin.calibration.streams import make_streams
from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest, package_size_bytes
from edgelin.runtime.session import Session
from edgelin.runtime.tokenizer import load_tokenizer
from edgelin.validate.drift import drift_curve, drift_slope
from edgelin.validate.snr import layer_snr, state_snr

SEGMENT = 512  # tokens fed per Session.forward call, at most
SEGMENT_LOGITS = 1 << 22  # logits [streams, tokens, vocab] of one call, at most (a large vocabulary takes fewer tokens)


def check_compatible(ref: Manifest, cand: Manifest, ref_dir: Path, cand_dir: Path) -> None:
    """Same vocabulary and the same states (names, layers, kinds, shapes); dtypes may differ."""
    if ref.vocab_size != cand.vocab_size:
        raise EdgelinError(f"candidate {cand_dir} has vocab {cand.vocab_size}, reference {ref_dir} has {ref.vocab_size}")
    layout = lambda m: [(s.input, s.output, s.layer, s.kind, tuple(s.shape)) for s in m.states]  # noqa: E731
    a, b = layout(ref), layout(cand)
    if a != b:
        diff = next((x, y) for x, y in zip(a + [None] * len(b), b + [None] * len(a)) if x != y)
        raise EdgelinError(f"candidate {cand_dir} has a different state layout from {ref_dir}: "
                           f"{diff[1][0] if diff[1] else 'nothing'} where the reference has {diff[0][0] if diff[0] else 'nothing'}")


def segment_tokens(chunk: int, streams: int, vocab: int) -> int:
    """Tokens per forward call: SEGMENT, or as many whole prefill chunks as keep the logits within
    SEGMENT_LOGITS (at least one). Whole chunks split the stream between prefill and decode as SEGMENT does."""
    fit = SEGMENT_LOGITS // (streams * vocab)
    return SEGMENT if fit >= SEGMENT else max(chunk, fit // chunk * chunk)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


def compare_packages(reference: str | Path, candidate: str | Path, text: str, *, horizon: int = 8192,
                     streams: int = 8, backend: str = "ort", progress: Callable[[int, int], None] | None = None,
                     reference_cache: dict | None = None, trust_native_code: bool = False) -> dict[str, Any]:
    """Compare `candidate` with `reference` on `text`.

    Returns a JSON-ready dict: loss_reference, loss_candidate (nats/token), loss_increase_pct,
    perplexity_reference, perplexity_candidate, kl_mean, kl_p99, top1_agreement,
    size_bytes_reference, size_bytes_candidate, size_ratio, tokens, streams, horizon,
    drift {position, kl, top1_agreement}, drift_slope, snr_db_state {state: dB},
    snr_db_layer {block: dB}, precision (the candidate's manifest precision).

    `reference_cache` (a dict the caller keeps) holds the reference's log-probabilities between
    calls with the same reference, text and stream layout, so comparing several candidates runs
    the reference once.
    """
    ref_dir, cand_dir = Path(reference), Path(candidate)
    # no repacked copies: each package's weights are in memory once
    ref, cand = (Session(d, backend=backend, trust_native_code=trust_native_code, prepack=False)
                 for d in (ref_dir, cand_dir))
    check_compatible(ref.manifest, cand.manifest, ref_dir, cand_dir)
    if not text or not text.strip():
        raise EdgelinError("the validation text is empty")
    if 1 in (ref.batch, cand.batch):  # back ends compiled for one sequence (openvino-stateful, tvm)
        streams = 1
    ids = make_streams(load_tokenizer(ref_dir, ref.manifest).encode(text), streams, horizon)
    B, T = ids.shape
    if T < 2:
        raise EdgelinError("the validation text is too short (need at least 2 tokens)")
    nll = np.zeros((2, B, T - 1))
    kl = np.zeros((B, T))
    agree = np.zeros((B, T), bool)
    states = [ref.new_state(B), cand.new_state(B)]
    segment = segment_tokens(ref.prefill_tokens, B, ref.vocab_size)
    segments = list(range(0, T, segment))
    key = (str(ref_dir.resolve()), hash(text), B, T, backend)
    cached = reference_cache.get(key) if reference_cache is not None else None
    ref_logp: list[np.ndarray] = []
    for i, a in enumerate(segments):
        b = min(a + segment, T)
        logp = []
        for j, sess in enumerate((ref, cand)):
            if j == 0 and cached is not None:
                logp.append(cached["logp"][i])
                continue
            logits, states[j] = sess.forward(ids[:, a:b], states[j])
            if not np.isfinite(logits).all():
                raise EdgelinError(f"{sess.package_dir} produced NaN or Inf logits at tokens {a}..{b}")
            logp.append(_log_softmax(logits))
        if cached is None and reference_cache is not None:
            ref_logp.append(logp[0])
        p_ref = np.exp(logp[0])
        kl[:, a:b] = np.sum(p_ref * (logp[0] - logp[1]), -1)
        agree[:, a:b] = logp[0].argmax(-1) == logp[1].argmax(-1)
        tgt_hi = min(b, T - 1)
        if tgt_hi > a:
            tgt = ids[:, a + 1:tgt_hi + 1]
            for j in range(2):
                nll[j, :, a:tgt_hi] = -np.take_along_axis(logp[j][:, : tgt_hi - a], tgt[..., None], -1)[..., 0]
        if progress:
            progress(i + 1, len(segments))
    if cached is not None:
        states[0] = cached["state"]
    elif reference_cache is not None:
        reference_cache[key] = {"logp": ref_logp, "state": states[0]}
    loss_ref, loss_cand = float(nll[0].mean()), float(nll[1].mean())
    kl = np.maximum(kl, 0.0)
    curve = drift_curve(kl, agree)
    snr_state = state_snr(ref.manifest.states, cand.manifest.raw["states"], states[0], states[1])
    ref_m, cand_m = ref.manifest, cand.manifest
    del ref, cand, states, logits, logp, p_ref  # the layer SNR probes load both packages again:
    gc.collect()  # the sessions' memory maps go now (a session is a reference cycle), not beside theirs
    return {
        "reference": str(ref_dir), "candidate": str(cand_dir),
        "loss_reference": loss_ref, "loss_candidate": loss_cand,
        "loss_increase_pct": 100.0 * (loss_cand - loss_ref) / loss_ref,
        "perplexity_reference": math.exp(loss_ref), "perplexity_candidate": math.exp(loss_cand),
        "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
        "top1_agreement": float(agree.mean()),
        "size_bytes_reference": package_size_bytes(ref_dir), "size_bytes_candidate": package_size_bytes(cand_dir),
        "size_ratio": package_size_bytes(cand_dir) / package_size_bytes(ref_dir),
        "tokens": int(B * T), "streams": int(B), "horizon": int(T),
        "drift": curve, "drift_slope": drift_slope(curve),
        "snr_db_state": snr_state,
        "snr_db_layer": layer_snr(ref_dir, ref_m, cand_dir, cand_m, ids) if backend == "ort" else {},
        "precision": cand_m.precision,
    }
