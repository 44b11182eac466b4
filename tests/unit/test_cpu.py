"""CPU classes from real /proc/cpuinfo texts: the class decides whether a package is checked again at load."""

from __future__ import annotations

import pytest

from berthing.runtime.cpu import CpuInfo, detect, parse_cpuinfo

EPYC = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC
flags		: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 smep bmi2 sha_ni vaes vpclmulqdq
"""
SAPPHIRE = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
processor	: 1
model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: fpu
"""
CASCADE = "model name\t: Intel(R) Xeon(R) Platinum 8259CL\nflags\t\t: avx2 avx512f avx512bw avx512_vnni\n"
SKYLAKE = "model name\t: Intel(R) Xeon(R) Platinum 8175M\nflags\t\t: avx2 avx512f avx512bw avx512cd\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm bf16\nCPU part\t: 0xd40\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


@pytest.mark.parametrize(
    ("text", "arch", "cls", "saturates", "described"),
    [
        (EPYC, "x86_64", "avx2", True, "AMD EPYC (avx2, no vnni)"),
        (SAPPHIRE, "x86_64", "amx", False, "Intel(R) Xeon(R) Platinum 8488C (amx, vnni)"),
        (CASCADE, "x86_64", "avx512-vnni", False, "Intel(R) Xeon(R) Platinum 8259CL (avx512, vnni)"),
        (SKYLAKE, "x86_64", "avx512", True, "Intel(R) Xeon(R) Platinum 8175M (avx512, no vnni)"),
        (GRAVITON3, "aarch64", "i8mm", False, "aarch64 (arm64, i8mm)"),
        (GRAVITON2, "aarch64", "dotprod", False, "aarch64 (arm64, dotprod)"),
    ],
)
def test_cpu_classes_from_cpuinfo(text: str, arch: str, cls: str, saturates: bool, described: str) -> None:
    info = parse_cpuinfo(text, arch)
    assert info.cpu_class == cls
    assert info.saturates_u8s8 is saturates
    assert info.describe() == described


def test_only_kernel_features_are_recorded_and_read_back() -> None:
    info = parse_cpuinfo(SAPPHIRE, "x86_64")
    assert info.features == ("amx_int8", "avx2", "avx512_vnni", "avx512bw", "avx512f", "avx_vnni")
    assert parse_cpuinfo(GRAVITON3, "aarch64").features == ("dotprod", "i8mm", "sve")
    data = info.to_dict()
    assert data["class"] == "amx"
    assert CpuInfo.from_dict(data) == info


def test_this_host_has_a_class() -> None:
    info = detect()
    assert info.cpu_class and info.cpu_class != "unknown"
    assert info.describe().endswith(")")
