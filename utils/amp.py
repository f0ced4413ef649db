"""`--amp`: bf16 autocast where the hardware computes in bf16 natively, fp32 elsewhere.

On CUDA, and on CPUs with AVX-512 BF16 or AMX (most recent server CPUs), bf16 matmuls run 2-3x
faster than fp32. Elsewhere bf16 would be emulated and slower, so `--amp` says so on one line and
runs in fp32. Scores keep full precision: `keep_fp32` makes the small modules whose outputs
become scores (SAM2's mask decoder, DINOv2's final layer norm) compute in fp32 from the bf16
features they are given, so their outputs are not rounded to bf16's 8-bit mantissa.
"""
import contextlib
import sys

import torch


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
