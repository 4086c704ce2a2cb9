"""A tiny exported package (gla-tiny, prefill 8), made once per session, and helpers to tamper with copies of it."""
import json
import shutil

import numpy as np
import pytest

from edgelin.runtime import Session
from edgelin.runtime.backends import register_backend
from edgelin.runtime.backends.ort import OrtBackend

PREFILL = 8


@pytest.fixture(scope="session")
def pkg(tmp_path_factory):
    """The pristine package; read only (tamper with `copy_pkg`)."""
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    return export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path_factory.mktemp("adv") / "gla", prefill_tokens=PREFILL)


@pytest.fixture(scope="session")
def ov_pkg(tmp_path_factory, pkg):
    """The package with OpenVINO IR (stateless and stateful)."""
    pytest.importorskip("openvino")
    from edgelin.exporters.openvino import export_openvino

    return export_openvino(shutil.copytree(pkg, tmp_path_factory.mktemp("adv-ov") / "gla"))


@pytest.fixture(scope="session")
def session(pkg):
    return Session(pkg, threads=1)


@pytest.fixture
def copy_pkg(tmp_path, pkg):
    """A writable copy of the package, its manifest changed in place by `edit(doc)`."""
    def copy(edit=None, name="p"):
        out = shutil.copytree(pkg, tmp_path / name)
        if edit is not None:
            doc = json.loads((out / "manifest.json").read_text())
            edit(doc)
            (out / "manifest.json").write_text(json.dumps(doc))
        return out
    return copy


def _corrupting(name, corrupt):
    """An ort back end whose outputs `corrupt(outputs)` changes: a graph that lies at run time."""
    @register_backend(name)
    class Corrupt(OrtBackend):
        def run(self, feeds):
            return corrupt(super().run(feeds))
    return Corrupt


def _nan_logits(out):
    out["logits"] = np.full_like(out["logits"], np.nan)
    return out


def _wide_logits(out):
    out["logits"] = np.concatenate([out["logits"], out["logits"][..., :1]], -1)
    return out


def _no_state(out):
    out.pop("present.0.conv_state")
    return out


def _f16_state(out):
    out["present.0.conv_state"] = out["present.0.conv_state"].astype(np.float16)
    return out


def _no_position_state(out):
    out.pop("present.0.recurrent_state.steps", None)  # only the verify graph has it
    return out


def _f16_position_state(out):
    if "present.0.conv_state.steps" in out:
        out["present.0.conv_state.steps"] = out["present.0.conv_state.steps"].astype(np.float16)
    return out


for _name, _fn in {"adv-nan": _nan_logits, "adv-wide": _wide_logits, "adv-nostate": _no_state,
                   "adv-f16": _f16_state, "adv-noposition": _no_position_state,
                   "adv-f16position": _f16_position_state}.items():
    _corrupting(_name, _fn)
