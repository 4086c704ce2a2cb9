"""edgelin.runtime imports and generates with torch made unimportable."""

from no_torch_helpers import run_without_torch

SCRIPT = r"""
try:
    import torch  # noqa: F401
    raise SystemExit("torch imported despite the block")
except ImportError:
    pass

from edgelin.runtime import ByteTokenizer, SamplingConfig, Session, generate, generate_text
s = Session(sys.argv[1], threads=1)
ids = list(generate(s, [104, 105, 33, 32, 104], 8, SamplingConfig(0.8, top_k=10), seed=0))
text = "".join(generate_text(s, ByteTokenizer(), "hi", 4))
assert len(ids) == 8 and not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", ids)
"""


def test_runtime_without_torch(toy_package):
    assert run_without_torch(SCRIPT, str(toy_package)).startswith("ok ")
