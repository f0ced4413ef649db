"""Atomic writes: every file is written under a temporary name in its folder, then renamed,
so a killed run never leaves a half-written file that a later step could mistake for a result."""
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError("cannot write output", str(path.parent),
                        f"choose a writable --output_dir ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_npy(path, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def save_pt(path, obj) -> Path:
    """Save tensors, numbers and strings (loadable with torch.load(weights_only=True))."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def save_png(path, image: Image.Image | np.ndarray) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def pack_masks(masks: list[np.ndarray]) -> dict:
    """Boolean masks of any sizes as one bit-packed uint8 tensor plus their shapes (8x smaller
    than bool, and storable in a weights_only .pt)."""
    return {
        "bits": torch.from_numpy(np.concatenate([np.packbits(m.ravel()) for m in masks])),
        "shapes": torch.tensor([m.shape for m in masks], dtype=torch.int64).reshape(-1, 2),
    }


def unpack_masks(packed: dict) -> list[np.ndarray]:
    bits, masks, start = packed["bits"].numpy(), [], 0
    for height, width in packed["shapes"].tolist():
        size = height * width
        length = (size + 7) // 8
        masks.append(np.unpackbits(bits[start:start + length], count=size).astype(bool).reshape(height, width))
        start += length
    return masks
