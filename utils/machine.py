"""What a measurement ran on, and how far it is from that machine's limit: the processor, its
measured peak matmul rate, and FLOP counts of the model's phases.

CPU kinds differ where it matters here: Intel Xeons with AMX multiply bf16 2.5-3x faster than
fp32, AMD EPYCs with AVX-512 BF16 (no AMX) about 2x; so every benchmark names its CPU (and GPU).
`torch.utils.flop_counter` does not see the CPU flash-attention kernel, so FLOPs are counted with
scaled-dot-product attention on its math backend, whose matrix products it does count.
"""
import os
import platform
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def describe(device: torch.device) -> dict:
    """The processor (model name, cores, bf16 units), and the GPU when the device is one."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    info = {"cpu": name, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def summary(info: dict) -> str:
    units = [unit for unit, present in (("AVX-512 BF16", info["avx512_bf16"]), ("AMX", info["amx"])) if present]
    text = f"{info['cpu']}, {info['cores']} cores" + (f" with {' and '.join(units)}" if units else "")
    return f"{info['gpu']} (host: {text})" if "gpu" in info else text


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU's), so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best rate of a size x size matrix product over a few repeats, in FLOP/s: the
    machine's practical peak for the dense work that dominates SAM2 and DINOv2."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def count_flops(function, *args, **kwargs) -> int:
    """Floating-point operations of one call (a multiply-add is 2), attention included."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return counter.get_total_flops()
