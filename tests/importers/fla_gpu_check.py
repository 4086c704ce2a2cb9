"""On a CUDA machine with fla installed: fla's own models (its Triton kernels: chunk, fused_recurrent,
rotary, fused norms) against the edgelin import and against fla_reference.py. Not collected by
pytest (needs a GPU); run from the repo root: `python -m tests.importers.fla_gpu_check [out.json]`.
The models are the ones test_fla_importers.py builds (same seeds and perturbation)."""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # fp32 dots in fla's kernels, not TF32

import torch  # noqa: E402

import fla.models  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from edgelin.models.loading import load_model  # noqa: E402
from tests.importers import fla_reference  # noqa: E402
from tests.importers.test_fla_importers import CASES, COMMON, VOCAB, perturb  # noqa: E402


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    only = os.environ.get("CASES")
    for name, (config_cls, kwargs, layout) in CASES.items():
        if only and name not in only.split(","):
            continue
        torch.manual_seed(0)
        with torch.no_grad():
            model = perturb(AutoModelForCausalLM.from_config(getattr(fla.models, config_cls)(**COMMON, **kwargs))).eval()
        path = Path(tempfile.mkdtemp()) / name
        model.save_pretrained(path)
        ours_lm = load_model(str(path)).model
        gpu = model.cuda()
        row = {}
        for T in (64, 200):  # fla picks fused_recurrent for <= 64 tokens, its chunk kernels above
            ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
            try:
                with torch.no_grad():
                    fla_logits = gpu(ids.cuda()).logits.float().cpu()
                    ours, _ = ours_lm(ids)
            except Exception as e:  # e.g. fla's chunk_delta_rule refuses float32
                row[f"T{T}_error"] = f"{type(e).__name__}: {e}"[:300]
                continue
            ref = fla_reference.forward(model.cpu(), ids)
            gpu = model.cuda()
            row[f"T{T}"] = {"edgelin_vs_fla": (ours - fla_logits).abs().max().item(),
                            "reference_vs_fla": (ref - fla_logits).abs().max().item(),
                            "logit_scale": fla_logits.abs().max().item()}
        try:  # fla's cached decoding, token by token, against edgelin's step form
            ids = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(2))
            with torch.no_grad():
                out = gpu(ids[:, :32].cuda(), use_cache=True)
                steps = [out.logits[:, -1].float().cpu()]
                for t in range(32, 47):
                    out = gpu(ids[:, t : t + 1].cuda(), past_key_values=out.past_key_values, use_cache=True)
                    steps.append(out.logits[:, -1].float().cpu())
                ours, state = ours_lm(ids[:, :32])
                mine = [ours[:, -1]]
                for t in range(32, 47):
                    o, state = ours_lm.step(ids[:, t : t + 1], state)
                    mine.append(o[:, -1])
            row["cached_decode_edgelin_vs_fla"] = max((a - b).abs().max().item() for a, b in zip(mine, steps))
        except Exception as e:  # report, don't hide
            row["cached_decode_error"] = f"{type(e).__name__}: {e}"[:300]
        results[name] = row
        print(name, json.dumps(row), flush=True)
        if len(sys.argv) > 1:  # after every case, so a run cut short still reports
            Path(sys.argv[1]).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
