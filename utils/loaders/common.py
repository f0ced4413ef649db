"""What every loader shares: an episode structure and image / mask reading with clear errors."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError, warn


@dataclass
class Sample:
    """An image and its object mask: a PNG path (read as grey, > 0) or a bool array. `eval_box`:
    the (left, top, right, bottom) crop a protocol measures the mask on (PerMIS), else None."""
    image_path: Path
    mask: Path | np.ndarray
    eval_box: tuple[float, float, float, float] | None = None

    def load_mask(self) -> np.ndarray:
        if isinstance(self.mask, np.ndarray):
            return self.mask
        return read_mask(self.mask)


@dataclass
class Episode:
    """One personalized object: reference samples (the prompts) and target samples."""
    name: str
    references: list[Sample]
    targets: list[Sample]


def require_dir(path, flag: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError("folder not found", f"{flag} {path}", fix)
    return path


def open_image(path) -> Image.Image:
    """Decode an image fully (so a truncated file fails here, with its name)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise UserError("unreadable image", str(path),
                        f"replace or re-download the file ({err})") from None


def image_size(path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise UserError("unreadable image", str(path),
                        f"replace or re-download the file ({err})") from None


def read_mask(path) -> np.ndarray:
    """A mask image read as grey and binarised with > 0, as PerSAM's `eval_miou.py` reads its
    ground truth (0/255 and 0/1 masks read the same). A mask with more grey values (antialiased
    edges, a mask saved as JPEG) is read by the same rule, with a warning naming the file."""
    grey = np.asarray(open_image(path).convert("L"))
    values = np.unique(grey)
    if len(values) > 2:
        warn(f"mask has {len(values)} grey values, not 2: read as > 0 (PerSAM's rule)", str(path),
             "save it as a binary PNG (0 and 255) if the soft edge should not count")
    return grey > 0


def check_same_size(mask_hw, image_path, mask_where: str) -> None:
    image_hw = image_size(image_path)
    if tuple(mask_hw) != image_hw:
        raise UserError(f"mask is {mask_hw[0]}x{mask_hw[1]} but its image is "
                        f"{image_hw[0]}x{image_hw[1]}", mask_where,
                        "masks must have their image's size; fix or re-download the annotation")
