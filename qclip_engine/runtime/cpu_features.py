"""What this CPU has for reduced precision: its model name and the instruction-set flags that matter.

Read from ``/proc/cpuinfo`` (Linux); elsewhere the model name comes from ``platform`` and the
flags are unknown (empty), so only FP32 is a candidate there. The flags decide which
precisions ``auto`` even times (``runtime/cpu_choice.py``):

* BF16 — ``amx_bf16`` (Intel AMX tiles) or ``avx512_bf16`` (Intel Cooper Lake and later, AMD
  Zen 4 and later): oneDNN runs torch's BF16 matrix products on them; without either, BF16 is
  emulated and slower than FP32.
* INT8 — ``amx_int8``, ``avx512_vnni`` or ``avx_vnni``: the dot-product instructions ONNX
  Runtime's quantized matrix products use; without them INT8 brings little.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
REPORTED_FLAGS = BF16_FLAGS | INT8_FLAGS | {"amx_tile", "avx512f", "avx2"}
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuIdentity:
    model: str
    flags: frozenset[str]  # of REPORTED_FLAGS, the ones this CPU has

    @property
    def bf16(self) -> bool:
        return bool(self.flags & BF16_FLAGS)

    @property
    def int8(self) -> bool:
        return bool(self.flags & INT8_FLAGS)

    def to_dict(self) -> dict:
        return {"model": self.model, "flags": sorted(self.flags)}


def parse_cpuinfo(text: str) -> CpuIdentity:
    """The first processor's model name and reported flags from ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split()) & REPORTED_FLAGS
        if model and flags:
            break
    return CpuIdentity(model or platform.processor() or platform.machine(), flags)


def cpu_identity() -> CpuIdentity:
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:  # not Linux
        return CpuIdentity(platform.processor() or platform.machine(), frozenset())
