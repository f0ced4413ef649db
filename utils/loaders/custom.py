"""Your own photos: one or more reference photos per object, and a folder of photos to search.

    my_photos/
      references/<object>.jpg     a photo of the object; more shots: <object>_2.jpg, <object>_3.jpg, ...
      references/<object>.png     its mask (any 2-valued image, read > 0), or
      references/<object>.txt     its box: "x1 y1 x2 y2" in pixels
      images/**/*.jpg|jpeg|png    the photos to search (sub-folders allowed; hidden files and
                                  folders, such as macOS's ._ files, are not photos)

Reference photos are JPEGs (a PNG beside one is its mask). `<name>_<N>.jpg` (N >= 2) is a further
shot of `<name>` when `<name>.jpg` exists, else an object of its own. Photos are read with their
EXIF orientation applied, as a photo viewer shows them (masks and boxes are drawn on that view).
Image ids are paths relative to the folder (`references/mug.jpg`, `images/kitchen/1.jpg`).
"""
import math
import re
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError
from utils.loaders.common import check_same_size, image_size, open_image, read_mask, require_dir
from utils.pair_scoring import ReferenceFrame
from utils.pseudo_video import Prompt

REFERENCE_SUFFIXES = (".jpg", ".jpeg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "references/<object>.jpg with <object>.png (mask) or <object>.txt (box), and images/"


@dataclass
class CustomData:
    root: Path
    objects: dict[str, list[ReferenceFrame]]  # object -> its shots, the frames of its pseudo-video
    images: list[str]  # ids of the photos to search, sorted

    def open(self, image_id: str):
        return open_image(self.root / image_id, exif=True)


def load_custom(root) -> CustomData:
    root = require_dir(root, "--data_path", f"a folder holding {LAYOUT} (README: Your own photos)")
    references = require_dir(root / "references", "--data_path", f"add references/: {LAYOUT}")
    images_dir = require_dir(root / "images", "--data_path", f"add images/ with the photos to search ({LAYOUT})")
    photos = sorted(p for p in references.iterdir() if p.suffix.lower() in REFERENCE_SUFFIXES)
    if not photos:
        raise UserError("no reference photo", str(references), f"add {LAYOUT}")
    stems = {p.stem for p in photos}
    objects: dict[str, list[ReferenceFrame]] = {}
    for photo in photos:
        shot = re.fullmatch(r"(.+)_(\d+)", photo.stem)
        name = shot.group(1) if shot and int(shot.group(2)) >= 2 and shot.group(1) in stems else photo.stem
        objects.setdefault(name, []).append(ReferenceFrame(str(photo.relative_to(root)), _prompt(photo)))
    images = sorted(str(p.relative_to(root)) for p in images_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(images_dir).parts))
    if not images:
        raise UserError("no photo to search", str(images_dir), "add .jpg or .png photos (sub-folders allowed)")
    for image in images:  # a file that is not an image stops the run here, before any work
        image_size(root / image, exif=True)
    return CustomData(root, objects, images)


def _prompt(photo: Path) -> Prompt:
    mask_file, box_file = photo.with_suffix(".png"), photo.with_suffix(".txt")
    if mask_file.is_file() == box_file.is_file():
        raise UserError("a reference photo needs exactly one of a mask (.png) and a box (.txt)", str(photo),
                        f"add {mask_file.name} (the object's mask) or {box_file.name} (x1 y1 x2 y2), not both")
    height, width = image_size(photo, exif=True)
    if mask_file.is_file():
        mask = read_mask(mask_file, exif=True)
        check_same_size(mask.shape, photo, str(mask_file), exif=True)
        if not mask.any():
            raise UserError("reference mask is empty", str(mask_file), "draw the object in white on black")
        return Prompt(mask=mask)
    try:
        x1, y1, x2, y2 = (float(v) for v in box_file.read_text().split())
    except (ValueError, UnicodeDecodeError):
        raise UserError("a box file holds four numbers: x1 y1 x2 y2", str(box_file),
                        "write the object's box in pixels, e.g. 120 80 480 400") from None
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise UserError(f"box {x1:g} {y1:g} {x2:g} {y2:g} is not inside the {width}x{height} photo", str(box_file),
                        "write x1 y1 x2 y2 with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height")
    return Prompt(box=(x1, y1, x2, y2))
