"""The machine a benchmark ran on (stdlib only, so a benchmark can name it before anything is installed)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> dict:
    """CPU model and the flags that decide training and inference speed here (AVX2/AVX-512/bf16/AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return {"model": model, "flags": [f for f in wanted if f in flags]}
