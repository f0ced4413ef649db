"""Faster SAM2 model instances, the same numbers: its modules compiled (as sam2's
`vos_optimized` predictor compiles them), and the image encoder's position encoding computed once
per image size. Each changes only the model instance given, never its state dict;
utils/pseudo_video.py applies them (tests/test_pseudo_video.py and tests/test_feed_and_compile.py
check the numbers)."""
import functools

import torch
from sam2.modeling.sam2_base import SAM2Base

from utils.amp import map_tensors


def compile_modules(model: SAM2Base) -> None:
    """`torch.compile` SAM2's image encoder, memory attention and mask decoder, as sam2's
    `SAM2VideoPredictorVOS._compile_all_components` (and `SAM2Base(compile_image_encoder=True)`)
    does: each module's forward, fullgraph, static shapes, mode max-autotune on CUDA. On the CPU
    the default mode: max-autotune's search of matrix kernels takes many minutes there (bench.py
    measures what compiling gains). Outputs are cloned, as the VOS predictor clones them, so
    that CUDA graphs may reuse their buffers. Only this model instance changes."""
    mode = "max-autotune" if model.device.type == "cuda" else None
    for module in (model.image_encoder, model.memory_attention, model.sam_mask_decoder):
        compiled = torch.compile(module.forward, mode=mode, fullgraph=True, dynamic=False)
        module.forward = functools.partial(_cloned_outputs, compiled)


def _cloned_outputs(forward, *args, **kwargs):
    return map_tensors(torch.clone, forward(*args, **kwargs))


def reuse_position_encoding(model: SAM2Base) -> None:
    """The image encoder's neck recomputes, copies and casts its sine position encoding (the same
    for every image of a size) on every forward: at 1024 px, 64 MB per image, a tenth (fp32) to a
    fifth (bf16) of an encode on a CPU. Give it back as a view of one cached copy per size and
    dtype instead (the same values). Only this model instance changes; its state dict does not."""
    encoding = model.image_encoder.neck.position_encoding
    if getattr(encoding, "_reused", False):
        return
    compute, cache = encoding.forward, {}

    def cached(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1], x.dtype, x.device)
        if key not in cache:
            cache[key] = compute(x[:1]).to(x.dtype)
        return cache[key].expand(x.shape[0], -1, -1, -1)

    encoding.forward = cached
    encoding._reused = True
