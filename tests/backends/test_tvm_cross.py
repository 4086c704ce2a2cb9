"""TVM cross-compiles an AArch64 library (Debian's gcc-aarch64-linux-gnu) into the package."""
import shutil
import struct
import warnings

import pytest

EM_AARCH64 = 183
CROSS_GCC = "aarch64-linux-gnu-gcc"


def elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2, f"{path} is not a 64-bit ELF file"
    return struct.unpack("<H", head[18:20])[0]


@pytest.mark.skipif(shutil.which(CROSS_GCC) is None,
                    reason=f"{CROSS_GCC} is absent: apt-get install gcc-aarch64-linux-gnu (see the Makefile)")
def test_aarch64_library_is_arm64_elf(fp_packages, fresh_copy):
    from edgelin.exporters.tvm import export_tvm
    from edgelin.runtime import read_package

    pkg = fresh_copy(fp_packages["gla-tiny"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_tvm(pkg, target="aarch64")
    m = read_package(pkg)  # checksums cover the new files
    entry = m.raw["backends"]["tvm"]["aarch64"]
    assert entry["files"] == ["tvm/aarch64/steps.so"]
    assert "x86_64" in m.raw["backends"]["tvm"]  # the host build is kept beside it
    for f in entry["files"]:
        assert elf_machine(pkg / f) == EM_AARCH64, f
