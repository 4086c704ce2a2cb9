"""The OpenVINO and TVM back ends run with torch made unimportable (edgelin.runtime stays torch-free)."""
from no_torch_helpers import run_without_torch

SCRIPT = r"""
from edgelin.runtime import Session, generate
for backend in ("openvino", "openvino-stateful", "tvm"):
    assert len(list(generate(Session(sys.argv[1], backend=backend, threads=1, trust_native_code=True), [72, 105], 4))) == 4
print("ok")
"""


def test_backends_without_torch(fp_packages):
    assert run_without_torch(SCRIPT, str(fp_packages["gla-tiny"]), timeout=300).strip().endswith("ok")
