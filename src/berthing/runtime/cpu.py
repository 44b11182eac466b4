"""The host CPU's features that change ONNX Runtime's integer kernels, and the class they put the CPU in.

Why: int8 results differ between CPUs. On x86 without VNNI (AVX2, AVX-512 before Cascade Lake) ONNX Runtime's
u8 x s8 kernels multiply with `vpmaddubsw`, whose 16-bit sums of two products saturate; VNNI (`vpdpbusd`) and AMX
add into 32 bits, and arm64's dot-product instructions do too. A graph verified on one class can serve other
vectors on another, so packages record the class they were verified on and a host of another class checks again.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Kernel-relevant features, by the name berthing records: /proc/cpuinfo spells most of them this way on Linux.
X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("dotprod", "i8mm", "sve")
_ALIASES = {"asimddp": "dotprod", "avxvnni": "avx_vnni", "avx512vnni": "avx512_vnni"}
# macOS sysctl names -> berthing's names
_DARWIN = {
    "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
}

# What each class means for ONNX Runtime's u8 x s8 products, in the words the start line uses.
CLASS_NOTES = {
    "amx": "amx, vnni", "avx512-vnni": "avx512, vnni", "avx-vnni": "avx2, avx-vnni", "avx512": "avx512, no vnni",
    "avx2": "avx2, no vnni", "sse": "no avx2", "i8mm": "arm64, i8mm", "dotprod": "arm64, dotprod", "neon": "arm64, no dotprod",
}


@dataclass(frozen=True)
class CpuInfo:
    """One CPU as far as ONNX Runtime's int8 kernels care: architecture, model name, and the features that matter."""

    arch: str  # platform.machine(): x86_64, aarch64, arm64, AMD64, ...
    model: str  # "AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C", or "" where the OS does not say
    features: tuple[str, ...]  # the X86_FEATURES / ARM_FEATURES present, sorted

    @property
    def cpu_class(self) -> str:
        """The kernel family ONNX Runtime picks for int8 on this CPU: hosts of one class compute the same integers."""
        have = set(self.features)
        if _is_x86(self.arch):
            for feature, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                                  ("avx512bw", "avx512"), ("avx2", "avx2")):
                if feature in have:
                    return name
            return "sse"
        if _is_arm64(self.arch):
            return "i8mm" if "i8mm" in have else "dotprod" if "dotprod" in have else "neon"
        return self.arch.lower() or "unknown"

    @property
    def saturates_u8s8(self) -> bool:
        """True where u8 x s8 pair sums pass through 16 bits (x86 without VNNI/AMX): 8-bit weights can overflow."""
        return self.cpu_class in ("avx512", "avx2", "sse")

    def describe(self) -> str:
        """For start lines and `inspect`: 'AMD EPYC (avx2, no vnni)'."""
        note = CLASS_NOTES.get(self.cpu_class, self.cpu_class)
        return f"{self.model or self.arch or 'unknown CPU'} ({note})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a package manifest."""
        return {"arch": self.arch, "model": self.model, "features": list(self.features), "class": self.cpu_class}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuInfo:
        """Back from a manifest (features it does not know are kept: a newer berthing may record more)."""
        return cls(str(data.get("arch", "")), str(data.get("model", "")), tuple(sorted(data.get("features", []))))


def _is_x86(arch: str) -> bool:
    return arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _is_arm64(arch: str) -> bool:
    return arch.lower() in ("aarch64", "arm64", "armv8", "armv8l")


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A Linux /proc/cpuinfo text -> CpuInfo (x86 'flags' and 'model name'; arm64 'Features' and 'CPU part')."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = {_ALIASES.get(f, f) for f in value.split()}
        elif key == "model name" and not model:
            model = value.strip()
    wanted = X86_FEATURES if _is_x86(arch) else ARM_FEATURES if _is_arm64(arch) else ()
    return CpuInfo(arch, model, tuple(sorted(f for f in wanted if f in flags)))


def _darwin() -> CpuInfo:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    features = tuple(sorted(name for key, name in _DARWIN.items() if sysctl(key) == "1"))
    return CpuInfo(platform.machine(), sysctl("machdep.cpu.brand_string"), features)


@functools.cache
def detect() -> CpuInfo:
    """This host's CPU (Linux: /proc/cpuinfo; macOS: sysctl; elsewhere the architecture alone)."""
    arch = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and cpuinfo.is_file():
        try:
            return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"), arch)
        except OSError:
            pass
    if sys.platform == "darwin":
        return _darwin()
    return CpuInfo(arch, platform.processor(), ())
