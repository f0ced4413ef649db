"""`--amp`: bf16 autocast where the hardware computes in bf16 natively, fp32 elsewhere.

On CUDA, and on CPUs with AVX-512 BF16 or AMX (most recent server CPUs), bf16 matmuls run 2-3x
faster than fp32. Elsewhere bf16 would be emulated and slower, so `--amp` says so on one line and
runs in fp32. Scores keep full precision: `keep_fp32` makes the small modules whose outputs
become scores (SAM2's mask decoder, DINOv2's final layer norm) compute in fp32 from the bf16
features they are given, so their outputs are not rounded to bf16's 8-bit mantissa.
On a CPU, attention in bf16 gains nothing through PyTorch's flash-attention kernel where the
CPU has no AMX, so an amp engine on such a CPU runs SAM2's attention as bf16 matrix products
instead (`MatmulAttention`; bench.py measures both on its machine: `attention_timings`); fp32
and GPUs never use it.
"""
import contextlib
import math
import sys
import time

import torch
import torch.nn.functional as F


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX-512 BF16
    or AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def amp_enabled(requested: bool, device: torch.device) -> bool:
    """Whether `--amp` takes effect on this device; if asked for where it would not pay, one
    line says so and the run stays in fp32."""
    if requested and not native_bf16(device):
        print(f"note: --amp ignored: {device.type} has no native bf16 matmuls here, running in fp32",
              file=sys.stderr)
        return False
    return requested


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the device if enabled, else nothing."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_fp32(module: torch.nn.Module, device: torch.device) -> None:
    """Make this module instance compute in fp32 under autocast: floating inputs are cast to fp32
    and autocast is off inside its forward. Its weights and state dict do not change; without
    autocast it computes exactly as before."""
    if getattr(module, "_keeps_fp32", False):
        return
    forward = module.forward

    def fp32_forward(*args, **kwargs):
        with torch.autocast(device.type, enabled=False):
            return forward(*map_tensors(_to_fp32, args), **map_tensors(_to_fp32, kwargs))

    module.forward = fp32_forward
    module._keeps_fp32 = True


def _to_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def map_tensors(function, value):
    """`value` with `function` applied to every tensor in it (in lists, tuples and dicts, at any
    depth); anything else is kept as it is."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(function, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(function, v) for k, v in value.items()}
    return value


# -- attention as bf16 matrix products, on CPUs where that is faster ---------------------------

ATTENTION_BLOCK = 2**20  # score elements per block: 4 MB of fp32 scores, which stay in cache (measured best here)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as bf16 matrix products over blocks of queries, each block's
    softmax computed in fp32 (PyTorch's kernel does so for bf16 scores, then rounds its output to
    bf16, as the product with v needs it) while its scores stay in cache. On a CPU without AMX,
    PyTorch's flash-attention kernel gains nothing in bf16 (its packed GEMM path serves fp16
    only), while these products run at the machine's bf16 rate. Same shapes as
    `F.scaled_dot_product_attention(q, k, v)`: [..., N, D], [..., M, D], [..., M, Dv]."""
    *lead, n, d = q.shape
    m, dv = k.shape[-2], v.shape[-1]
    queries, values = q.reshape(-1, n, d), v.reshape(-1, m, dv)
    keys = (k.reshape(-1, m, d) * (1 / math.sqrt(d))).transpose(1, 2)
    out = torch.empty(queries.shape[0], n, dv, dtype=q.dtype, device=q.device)
    rows = max(1, ATTENTION_BLOCK // m)
    heads = max(1, ATTENTION_BLOCK // (n * m)) if rows >= n else 1
    for h in range(0, queries.shape[0], heads):
        for s in range(0, n, rows):
            scores = torch.bmm(queries[h:h + heads, s:s + rows], keys[h:h + heads])
            torch.bmm(torch.softmax(scores, -1), values[h:h + heads], out=out[h:h + heads, s:s + rows])
    return out.reshape(*lead, n, dv)


class MatmulAttention(torch.overrides.TorchFunctionMode):
    """Within it (this thread only), `F.scaled_dot_product_attention` of bf16 CPU tensors without
    mask, dropout or a scale of its own runs as `matmul_attention`; every other call is untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and _plain_attention(args, kwargs):
            return matmul_attention(*args[:3])
        return func(*args, **kwargs)


def _plain_attention(args, kwargs) -> bool:
    q = args[0]
    extra = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:]), **kwargs)
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and extra.get("attn_mask") is None and \
        not extra.get("dropout_p") and not extra.get("is_causal") and extra.get("scale") is None and \
        not extra.get("enable_gqa") and len(args) >= 3


def attention_timings(tokens: int = 4096, dim: int = 256, repeats: int = 3) -> dict[str, float]:
    """Seconds of one bf16 attention of SAM2's memory (`tokens` queries and keys, `dim` wide) with
    PyTorch's kernel and as `matmul_attention`, each the best of a few (this CPU's own answer)."""
    q, k, v = (torch.randn(1, 1, tokens, dim).to(torch.bfloat16) for _ in range(3))
    timings = {}
    for name, attend in (("kernel", F.scaled_dot_product_attention), ("matmul", matmul_attention)):
        attend(q, k, v)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            attend(q, k, v)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings
