"""DINOv2 CLS features through Hugging Face transformers (any DINOv2 size, hub id or local folder).

Preprocessing: RGB, shorter side resized to `resolution` (bicubic), centre crop to
resolution x resolution, ImageNet mean/std. The feature is the final layer-normed CLS token
(`pooler_output`), L2-normalised, so the inner product is the cosine similarity.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.errors import UserError

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def load_dinov2(name: str, device):
    """A frozen `Dinov2Model` from a hub id (e.g. facebook/dinov2-small) or a local folder."""
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
    return model.eval().to(device)


def preprocess(image: Image.Image, resolution: int) -> torch.Tensor:
    """[3, R, R] float32: shorter side to R (bicubic), centre crop, ImageNet normalisation."""
    rgb = image.convert("RGB")
    scale = resolution / min(rgb.size)
    width, height = max(resolution, round(rgb.width * scale)), max(resolution, round(rgb.height * scale))
    resized = rgb.resize((width, height), Image.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    crop = resized.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


@torch.inference_mode()
def embed(model, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLS features [B, D] (float32, on CPU) of a preprocessed batch."""
    device = next(model.parameters()).device
    features = model(pixel_values=pixels.to(device)).pooler_output
    return F.normalize(features.float(), dim=-1).cpu()
