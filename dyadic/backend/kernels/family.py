"""The kernel families a conv / dense layer can run on (model.json `kernel_coverage.layer_kernels`)."""
from __future__ import annotations

import enum


class KernelFamily(enum.Enum):
    """Which kernel family a layer ran on (recorded per layer in model.json)."""
    AMX = "amx"
    VNNI = "vnni"
    VNNI16 = "vnni16"  # 16-bit activations on `vpdpwssd` (AVX512-VNNI)
    AVX512 = "avx512"
    AVX2 = "avx2"
    SDOT = "sdot"
    USDOT = "usdot"
    USMMLA = "usmmla"
    CUDA = "cuda"
