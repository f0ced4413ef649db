"""What every loader shares: an episode structure, and checks of a dataset's folders and masks.

Images and masks are read by utils/images.py. Whether the EXIF orientation is applied is the
dataset's rule, as its official code reads it: PerSeg (PerSAM reads with OpenCV, which applies
it) and your own photos (`custom`) yes; PerMIRS (PDM: PIL), revisitop and UnED no; ILIAS by split
(utils/ilias_store.py). A mask follows its image's rule.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError
from utils.images import image_size, open_cropped, open_image


@dataclass
class Sample:
    """An image as the model is given it, and its object mask (bool, at that image's size; None
    where a protocol needs none, as for a PerMIR gallery image).
    `input_box`: the model is given the image cut to this (left, top, right, bottom) box and
    resized to `input_size` square (PDM's inputs, utils/loaders/permirs.py `pdm_input`), else the
    whole image. `eval_box`: the crop a protocol measures the mask on when the model is given the
    whole image (PerMIS with full frames), else None. `exif`: whether the image is read
    EXIF-oriented (the dataset's rule)."""
    image_path: Path
    mask: np.ndarray | None
    eval_box: tuple[float, float, float, float] | None = None
    exif: bool = False
    input_box: tuple[float, float, float, float] | None = None
    input_size: int | None = None

    def load_image(self) -> Image.Image:
        if self.input_box is not None:
            return open_cropped(self.image_path, self.input_box, self.input_size)
        return open_image(self.image_path, self.exif)


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


def check_same_size(mask_hw, image_path, mask_where: str, exif: bool = False) -> None:
    image_hw = image_size(image_path, exif)
    if tuple(mask_hw) != image_hw:
        raise UserError(f"mask is {mask_hw[0]}x{mask_hw[1]} but its image is "
                        f"{image_hw[0]}x{image_hw[1]}", mask_where,
                        "masks must have their image's size; fix or re-download the annotation")
