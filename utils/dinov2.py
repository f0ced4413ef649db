"""DINOv2 CLS features through Hugging Face transformers (any DINOv2 size, hub id or local folder).

Two preprocessings, both RGB, bicubic, ImageNet mean/std:
- `large_side` (ILIAS's official `RESIZE_LARGE` + DINOv2's `MultiplierPadding(14)`, the paper's
  DINOv2 runs): the larger side resized to `resolution` with the aspect kept (the other side
  floored), then zero padding, centred, to a multiple of the patch size; no crop;
- `short_side_crop`: the shorter side resized to `resolution`, then a centre square crop.
The feature is the final layer-normed CLS token (`pooler_output`), L2-normalised, so the inner
product is the cosine similarity. With amp, the model runs under bf16 autocast and its final layer
norm in fp32 (utils/amp.py), so features are not rounded to bf16.
"""
import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.amp import autocast, keep_fp32
from utils.errors import UserError
from utils.loops import progress, worker_map

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
PREPROCESSING = ("large_side", "short_side_crop")


def load_dinov2(name: str, device: torch.device, amp: bool = False):
    """A frozen `Dinov2Model` from a hub id (e.g. facebook/dinov2-small) or a local folder; with
    amp, ready for `embed(..., amp=True)`."""
    import sys

    from transformers import Dinov2Model  # imported here: transformers is slow to import
    from transformers.utils import logging as transformers_logging

    if not sys.stderr.isatty():  # its loading bars would garble logs and one-line errors
        transformers_logging.disable_progress_bar()
    try:
        model = Dinov2Model.from_pretrained(name)
    except OSError as err:
        raise UserError("cannot load DINOv2", f"--dinov2 {name}",
                        "check the hub id and the network, or pass a local model folder "
                        f"({str(err).splitlines()[0][:160]})") from None
    model.requires_grad_(False)
    if amp:
        keep_fp32(model.layernorm, device)
    return model.eval().to(device)


def preprocess(image: Image.Image, resolution: int, mode: str = "large_side", patch_size: int = 14) -> torch.Tensor:
    """[3, H, W] float32 for the model, by `mode` (see the module docstring)."""
    rgb = image.convert("RGB")
    if mode == "large_side":
        aspect = rgb.height / rgb.width
        height = max(1, int(resolution * aspect)) if aspect <= 1 else resolution
        width = max(1, int(resolution / aspect)) if aspect > 1 else resolution
        return _pad_to_multiple(_normalised(rgb.resize((width, height), Image.BICUBIC)), patch_size)
    if mode == "short_side_crop":
        scale = resolution / min(rgb.size)
        width, height = max(resolution, round(rgb.width * scale)), max(resolution, round(rgb.height * scale))
        resized = rgb.resize((width, height), Image.BICUBIC)
        left, top = (width - resolution) // 2, (height - resolution) // 2
        return _normalised(resized.crop((left, top, left + resolution, top + resolution)))
    raise ValueError(f"unknown preprocessing {mode!r}, expected one of {PREPROCESSING}")


def _normalised(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


def _pad_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero padding (after normalisation) to the next multiple, split as evenly as possible with
    the smaller half before (left, top)."""
    pads = []
    for size in (pixels.shape[2], pixels.shape[1]):  # F.pad takes the last dimension first
        extra = math.ceil(size / multiple) * multiple - size
        pads += [extra // 2, extra - extra // 2]
    return F.pad(pixels, pads)


@torch.inference_mode()
def embed(model, pixels: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """L2-normalised CLS features [B, D] (float32, on CPU) of a preprocessed batch (one shape)."""
    device = next(model.parameters()).device
    with autocast(device, amp):
        features = model(pixel_values=pixels.to(device)).pooler_output
    return F.normalize(features.float(), dim=-1).cpu()


def embed_batches(model, pixels: Iterable[torch.Tensor], batch_size: int, amp: bool = False) -> np.ndarray:
    """Features [N, D] of a stream of preprocessed images, in their order; images of one shape are
    batched together (only a batch per shape is held at a time)."""
    features: list[np.ndarray | None] = []
    pending: dict[tuple, list] = {}  # shape -> [(position, pixels)]

    def flush(shape):
        positions, batch = zip(*pending.pop(shape))
        for position, row in zip(positions, embed(model, torch.stack(batch), amp).numpy()):
            features[position] = row

    for image in pixels:
        features.append(None)
        pending.setdefault(tuple(image.shape), []).append((len(features) - 1, image))
        if len(pending[tuple(image.shape)]) == batch_size:
            flush(tuple(image.shape))
    for shape in list(pending):
        flush(shape)
    return np.stack(features) if features else np.zeros((0, model.config.hidden_size), np.float32)


def embed_images(model, images, resolution: int, mode: str, batch_size: int, amp: bool = False,
                 desc: str | None = None, num_workers: int = 0) -> np.ndarray:
    """Features [N, D] of images given as callables returning a PIL image, in their order,
    decoded and preprocessed by `num_workers` processes ahead of the model (0: in this one)."""
    patch_size = model.config.patch_size
    preprocessed = worker_map(lambda load: preprocess(load(), resolution, mode, patch_size), images, num_workers)
    return embed_batches(model, progress(preprocessed, total=len(images), desc=desc, unit="img",
                                         disable=None if desc else True), batch_size, amp)
