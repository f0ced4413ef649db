"""What every loader shares: an episode structure and image / mask reading with clear errors."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


@dataclass
class Sample:
    """An image and its object mask: a PNG path (read as grey, > 0) or a bool array."""
    image_path: Path
    mask: Path | np.ndarray

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
    """A mask PNG read as grey and binarised with > 0 (the PerSeg convention: 0/255 and 0/1
    masks read the same). A third grey value means this is not a binary mask: an error."""
    grey = np.asarray(open_image(path).convert("L"))
    values = np.unique(grey)
    if len(values) > 2:
        raise UserError(f"mask has {len(values)} grey values ({', '.join(map(str, values[:4]))}, ...), "
                        "not 2", str(path), "save it as a binary mask (0 and 255, or 0 and 1)")
    return grey > 0


def check_same_size(mask_hw, image_path, mask_where: str) -> None:
    image_hw = image_size(image_path)
    if tuple(mask_hw) != image_hw:
        raise UserError(f"mask is {mask_hw[0]}x{mask_hw[1]} but its image is "
                        f"{image_hw[0]}x{image_hw[1]}", mask_where,
                        "masks must have their image's size; fix or re-download the annotation")
