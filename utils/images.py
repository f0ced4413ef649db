"""Images opened in one place: which formats, which way up, what size, masks, and reduced decoding.

Formats: JPEG (and its multi-picture MPO), PNG, WebP, AVIF, HEIC/HEIF (pillow-heif, registered
here once), TIFF and BMP. A file is opened by its content, never by its name, and only as one of
these (Pillow's `formats=`): an EPS, SVG or any other format behind a `.jpg` name is refused, so
no other decoder (Ghostscript for EPS, say) ever runs on a file it was given.
Pixels come out RGB: grey, CMYK, palette and 16-bit images converted, an alpha channel dropped,
as OpenCV's `imread` and PIL's `convert("RGB")` in the official tools do.
Orientation: with `exif`, the image is turned upright by its EXIF orientation tag, as a photo
viewer shows it (HEIF stores its rotation in the container, which libheif applies on decoding).
Whether a dataset's images are oriented is its official code's rule (utils/loaders/common.py).
Size: up to PIL's decompression-bomb limit (179 Mpixel) images decode without a warning; a
larger one, or one above a caller's `max_pixels`, is refused from its header, before decoding.
Reduced decoding: a model that sees a smaller image than the file holds (SAM2's 1024 x 1024, a
DINOv2 input) may ask for `min_side`: a JPEG is then decoded by DCT scaling (`Image.draft`) at
the smallest scale whose sides, after orientation, are both still >= min_side (scales 1/2, 1/4,
1/8: two to eight times fewer pixels to decode), and the caller resizes it exactly as before.
Other formats have no such decoder and decode whole. Benchmarks never ask for it.
A file that cannot be decoded raises `Unreadable`, which names it: a benchmark stops on it,
a photo library skips the file and lists it (utils/loaders/custom.py).
"""
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError, warn

pillow_heif.register_heif_opener()

PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "TIFF", "BMP")  # Pillow's openers (JPEG opens MPO too)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".heif", ".hif", ".tif", ".tiff", ".bmp")
# camera RAW files: their sensor data needs a RAW developer; the camera or its app exports them
RAW_SUFFIXES = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
                ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".raw")
ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose)
UPRIGHT = {2: (Image.Transpose.FLIP_LEFT_RIGHT,), 3: (Image.Transpose.ROTATE_180,),
           4: (Image.Transpose.FLIP_TOP_BOTTOM,), 5: (Image.Transpose.TRANSPOSE,),
           6: (Image.Transpose.ROTATE_270,), 7: (Image.Transpose.TRANSVERSE,), 8: (Image.Transpose.ROTATE_90,)}
TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, RuntimeError, EOFError,
                 Image.DecompressionBombError)


class Unreadable(UserError):
    """A photo or video that cannot be decoded: not a format this project reads, damaged, or too
    large to decode."""


@dataclass(frozen=True)
class Decoded:
    """An image decoded for a model: `image` (RGB, upright) may be smaller than the photo when it
    was decoded reduced; `height` and `width` are the photo's own upright size, which masks and
    prompts refer to."""
    image: Image.Image
    height: int
    width: int


def _unreadable(path, err: Exception) -> Unreadable:
    if isinstance(err, Image.DecompressionBombError):
        return Unreadable(f"image too large to decode safely ({err})", str(path),
                               "resize it below 179 Mpixel, or check that the file is what it claims to be")
    if isinstance(err, UnidentifiedImageError):
        return Unreadable("not a photo in a format this project reads", str(path),
                               "save it as JPEG, PNG, WebP, AVIF, HEIC, TIFF or BMP")
    if isinstance(err, FileNotFoundError):
        return Unreadable("no longer there (moved or removed since the search listed it)", str(path),
                          "search again")
    reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return Unreadable(f"not a readable image ({reason})", str(path), "replace or re-export the file")


class _Opened:
    """`Image.open` of a photo format only, with its size checked from the header."""

    def __init__(self, source, max_pixels: int | None = None):
        self.source, self.max_pixels, self.image = source, max_pixels, None

    def __enter__(self) -> Image.Image:
        with warnings.catch_warnings():  # images up to PIL's hard limit are accepted
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            self.image = Image.open(self.source, formats=PHOTO_FORMATS)
        if self.max_pixels is not None and self.image.width * self.image.height > self.max_pixels:
            size = f"{self.image.width}x{self.image.height}"
            self.image.close()
            raise Unreadable(f"image of {size} pixels is larger than the limit of {self.max_pixels:,} pixels",
                                  _name(self.source), "resize it, or ask for a larger limit")
        return self.image

    def __exit__(self, *exc):
        if self.image is not None:
            self.image.close()
        return False


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, if it has none)."""
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except (ValueError, TypeError, SyntaxError):  # a damaged EXIF block orients nothing
        return 1


def upright(image: Image.Image, tag: int) -> Image.Image:
    for method in UPRIGHT.get(tag, ()):
        image = image.transpose(method)
    return image


def decode(source, exif: bool = False, min_side: int | None = None, max_pixels: int | None = None) -> Decoded:
    """The image as RGB, fully decoded (a truncated file fails here, with its name), upright if
    `exif`; with `min_side`, a JPEG decoded reduced (see the module docstring). `source`: a path
    or a binary file."""
    try:
        with _Opened(source, max_pixels) as image:
            tag = orientation(image) if exif else 1
            width, height = (image.height, image.width) if tag in TRANSPOSING else (image.width, image.height)
            if min_side is not None and image.format in ("JPEG", "MPO"):
                image.draft("RGB", (min_side, min_side))  # both sides stay >= min_side, in either orientation
            rgb = image.convert("RGB")
            return Decoded(upright(rgb, tag), height, width)
    except DECODE_ERRORS as err:
        raise _unreadable(_name(source), err) from None


def open_image(source, exif: bool = False, max_pixels: int | None = None) -> Image.Image:
    """The whole image as RGB, upright if `exif` (see `decode`)."""
    return decode(source, exif, max_pixels=max_pixels).image


def open_cropped(path, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """The image cut to `box` (PIL rounds its edges), resized to size x size with PIL's default
    filter for its mode (bicubic for RGB and grey), then RGB: in this order, as PDM prepares its
    frames (`load_im_into_format_from_path(...).resize((512, 512)).convert("RGB")`)."""
    try:
        with _Opened(path) as image:
            return image.crop(box).resize((size, size)).convert("RGB")
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def image_size(source, exif: bool = False, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels; upright if `exif`."""
    try:
        with _Opened(source, max_pixels) as image:
            height, width = image.height, image.width
            return (width, height) if exif and orientation(image) in TRANSPOSING else (height, width)
    except DECODE_ERRORS as err:
        raise _unreadable(_name(source), err) from None


def read_mask(path, exif: bool = False) -> np.ndarray:
    """A mask image binarised with > 0, as PerSAM's `eval_miou.py` reads its ground truth (0/255
    and 0/1 masks read the same; colour masks through grey; 16-bit masks at their full depth,
    where OpenCV's 8-bit read would lose a 0/1 mask). A mask with more than two values
    (antialiased edges, a mask saved as JPEG) is read by the same rule, with a warning naming
    the file."""
    try:
        with _Opened(path) as image:
            image.load()
            tag = orientation(image) if exif else 1
            values = np.asarray(upright(image if image.mode in ("I", "I;16", "I;16B", "F") else image.convert("L"), tag))
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None
    if values.ndim != 2:
        raise UserError(f"mask has shape {values.shape}, not a 2-D image", str(path), "save it as a grey PNG")
    levels = np.unique(values) if values.dtype != np.uint8 else np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    if len(levels) > 2:
        warn(f"mask has {len(levels)} grey values, not 2: read as > 0 (PerSAM's rule)", str(path),
             "save it as a binary PNG (0 and 255) if the soft edge should not count")
    return values > 0


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The (x1, y1, x2, y2) bounding box of a mask's pixels (x2, y2 exclusive)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def decode_bytes(data: bytes, exif: bool) -> Image.Image | None:
    """An image held in memory (a shard's sample), or None if it cannot be decoded."""
    try:
        return open_image(io.BytesIO(data), exif)
    except Unreadable:
        return None
