"""What every loader shares: an episode structure, and reading images and masks as users have them.

Images become RGB (grey, CMYK, palette and 16-bit images converted; an alpha channel dropped, as
OpenCV's `imread` and PIL's `convert("RGB")` in the official tools do). Whether the EXIF
orientation is applied is the dataset's rule, as its official code reads it: PerSeg (PerSAM reads
with OpenCV, which applies it) and your own photos (`custom`) yes; PerMIRS (PDM: PIL), revisitop
and UnED no; ILIAS by split (utils/ilias_store.py). A mask follows its image's rule. Images up to
PIL's decompression-bomb limit (179 Mpixel) are read without a warning; a larger one is refused.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import UserError, warn

TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


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


def _unreadable(path, err) -> UserError:
    if isinstance(err, Image.DecompressionBombError):
        return UserError(f"image too large to decode safely ({err})", str(path),
                         "resize it below 179 Mpixel, or check that the file is what it claims to be")
    return UserError("not a readable image", str(path), f"replace or re-download the file ({err})")


def _opened(path) -> Image.Image:
    with warnings.catch_warnings():  # images up to PIL's hard limit are accepted
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def open_image(path, exif: bool = False) -> Image.Image:
    """The image as RGB, fully decoded (a truncated file fails here, with its name), oriented by
    its EXIF tag if `exif`."""
    try:
        with _opened(path) as image:
            rgb = image.convert("RGB")
            return ImageOps.exif_transpose(rgb) if exif else rgb
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def open_cropped(path, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """The image cut to `box` (PIL rounds its edges), resized to size x size with PIL's default
    filter for its mode (bicubic for RGB and grey), then RGB: in this order, as PDM prepares its
    frames (`load_im_into_format_from_path(...).resize((512, 512)).convert("RGB")`)."""
    try:
        with _opened(path) as image:
            return image.crop(box).resize((size, size)).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def image_size(path, exif: bool = False) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels; as oriented if `exif`."""
    try:
        with _opened(path) as image:
            height, width = image.height, image.width
            if exif and image.getexif().get(0x0112) in TRANSPOSING_ORIENTATIONS:
                height, width = width, height
            return height, width
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def read_mask(path, exif: bool = False) -> np.ndarray:
    """A mask image binarised with > 0, as PerSAM's `eval_miou.py` reads its ground truth (0/255
    and 0/1 masks read the same; colour masks through grey; 16-bit masks at their full depth,
    where OpenCV's 8-bit read would lose a 0/1 mask). A mask with more than two values
    (antialiased edges, a mask saved as JPEG) is read by the same rule, with a warning naming
    the file."""
    try:
        with _opened(path) as image:
            image.load()
            if exif:
                image = ImageOps.exif_transpose(image)
            values = np.asarray(image if image.mode in ("I", "I;16", "I;16B", "F") else image.convert("L"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None
    if values.ndim != 2:
        raise UserError(f"mask has shape {values.shape}, not a 2-D image", str(path), "save it as a grey PNG")
    levels = np.unique(values) if values.dtype != np.uint8 else np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    if len(levels) > 2:
        warn(f"mask has {len(levels)} grey values, not 2: read as > 0 (PerSAM's rule)", str(path),
             "save it as a binary PNG (0 and 255) if the soft edge should not count")
    return values > 0


def check_same_size(mask_hw, image_path, mask_where: str, exif: bool = False) -> None:
    image_hw = image_size(image_path, exif)
    if tuple(mask_hw) != image_hw:
        raise UserError(f"mask is {mask_hw[0]}x{mask_hw[1]} but its image is "
                        f"{image_hw[0]}x{image_hw[1]}", mask_where,
                        "masks must have their image's size; fix or re-download the annotation")
