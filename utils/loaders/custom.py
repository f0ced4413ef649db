"""Your own library: one or more reference photos per object, and a folder of photos and videos.

    my_photos/
      references/<object>.<photo>     a photo of the object; more shots: <object>_2.<photo>, ...
      references/<object>.txt         its prompt: a box and/or points (utils/prompts.py), or
      references/<object>.mask.png    its mask (any 2-valued image, read > 0; `<object>.png` too,
                                      beside a reference photo of another format)
      images/**                       the photos and videos to search (sub-folders allowed;
                                      hidden files and folders, such as macOS's ._ files, are not)

Photo formats and orientation: utils/images.py (JPEG, PNG, WebP, AVIF, HEIC/HEIF, TIFF, BMP,
read upright as a viewer shows them: masks, boxes and points are drawn on that view). Videos:
utils/video.py (MP4, MOV, M4V, MKV, WebM, AVI). `<name>_<N>` (N >= 2) is a further shot of
`<name>` when `<name>` is an object, else an object of its own. Image ids are paths relative to
the folder (`references/mug.jpg`, `images/kitchen/1.heic`, `images/clips/a.mp4`).
A reference that cannot be read, or a bad prompt, stops the run with one line (there would be
nothing to search for). A photo or video of the folder that cannot be read is skipped: one
warning line names it and says why, and it is listed (`Library.skipped`); so is a camera RAW file
(export it from the camera's app). Other files (sidecars, notes) are not photos and are left alone.
With `bounds`, every file is read only if it lies, links resolved, inside one of those folders
and outside `excluded` (the web page: its photo root, never its own outputs); a link that leaves
them is skipped, when listed and again when opened.
"""
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from utils.errors import UserError, warn
from utils.images import (PHOTO_SUFFIXES, RAW_SUFFIXES, Decoded, Unreadable, decode, image_size, read_mask)
from utils.loaders.common import require_dir
from utils.prompts import ReferenceFrame, mask_prompt, parse_prompt
from utils.video import VIDEO_SUFFIXES, probe

LAYOUT = ("references/<object>.<photo> with <object>.txt (box or points) or <object>.mask.png (mask), and "
          "images/ with the photos and videos to search")


@dataclass(frozen=True)
class Skipped:
    """A file of the library that was not searched, and why."""
    file: str
    reason: str

    def record(self) -> dict:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class Bounds:
    """Where a library's files may be read from: inside `root` but not inside `excluded`, or inside
    one of `own` (the page's folder of a search: its uploads and references). Links resolved."""
    root: Path
    excluded: tuple[Path, ...] = ()
    own: tuple[Path, ...] = ()

    def allows(self, path: Path) -> bool:
        real = Path(path).resolve()
        return _inside(real, self.own) or real.is_relative_to(self.root) and not _inside(real, self.excluded)

    def excludes(self, path: Path) -> bool:
        """Inside an excluded folder and none of `own`: never read, nor walked into."""
        real = Path(path).resolve()
        return _inside(real, self.excluded) and not _inside(real, self.own)

    def check(self, path: Path) -> None:
        if not self.allows(path):
            raise Unreadable("a file outside the folders this page may read (a link?)", Path(path).name,
                             "copy the file itself into the searched folder")


@dataclass
class Library:
    root: Path
    objects: dict[str, list[ReferenceFrame]]  # object -> its shots, the frames of its pseudo-video
    photos: list[str]  # ids of the photos to search, sorted
    videos: list[str] = field(default_factory=list)  # ids of the videos to search, sorted
    skipped: list[Skipped] = field(default_factory=list)  # found unreadable while listing
    bounds: Bounds | None = None

    @cached_property
    def _stems(self) -> Counter:
        return Counter(Path(f).with_suffix("") for f in self.photos + self.videos)

    def result_stem(self, image_id: str) -> str:
        """A searched file's path under images/ without its extension (with it when another
        searched file of its folder shares the stem, as a Live Photo's .HEIC and .MOV do): where
        its masks and pictures go."""
        path = Path(image_id)
        kept = path if self._stems[path.with_suffix("")] > 1 else path.with_suffix("")
        return str(kept.relative_to("images"))

    def path(self, image_id: str) -> Path:
        path = self.root / image_id
        if self.bounds is not None:
            self.bounds.check(path)
        return path

    def open(self, image_id: str):
        """The whole photo, upright."""
        return decode(self.path(image_id), exif=True).image

    def decode(self, image_id: str, min_side: int | None = None) -> Decoded:
        """The photo for a model whose input sides are `min_side` (decoded reduced where the
        format allows: utils/images.py), with its own size."""
        return decode(self.path(image_id), exif=True, min_side=min_side)


def load_library(root, bounds: Bounds | None = None, max_pixels: int | None = None) -> Library:
    """The references (read and checked now) and the photos and videos to search (each header
    read now: a file that is not a photo or video is skipped before any work)."""
    root = require_dir(root, "--data_path", f"a folder holding {LAYOUT} (README: Your own photos)")
    references = require_dir(root / "references", "--data_path", f"add references/: {LAYOUT}")
    return Library(root, reference_objects(root, references, bounds), *library_files(root, bounds, max_pixels),
                   bounds=bounds)


def library_files(root: Path, bounds: Bounds | None = None,
                  max_pixels: int | None = None) -> tuple[list[str], list[str], list[Skipped]]:
    """The photos and videos under <root>/images (sorted ids), and the files skipped there."""
    images_dir = require_dir(root / "images", "--data_path", f"add images/ with the photos to search ({LAYOUT})")
    photos, videos, skipped = [], [], []
    for path in _files(images_dir, bounds):
        image_id = str(path.relative_to(root))
        suffix = path.suffix.lower()
        try:
            if suffix in RAW_SUFFIXES:
                raise Unreadable("a camera RAW file", str(path), "export it as JPEG or HEIC from the camera's app")
            if suffix not in PHOTO_SUFFIXES + VIDEO_SUFFIXES:
                continue
            if bounds is not None:
                bounds.check(path)
            if suffix in PHOTO_SUFFIXES:
                image_size(path, exif=True, max_pixels=max_pixels)
                photos.append(image_id)
            else:
                probe(path, max_pixels)
                videos.append(image_id)
        except Unreadable as err:
            skipped.append(skip(image_id, err))
    if not photos and not videos:
        raise UserError("no photo or video to search" + (f" ({len(skipped)} skipped)" if skipped else ""),
                        str(images_dir), "add photos or videos (sub-folders allowed)")
    return sorted(photos), sorted(videos), skipped


def _inside(path: Path, folders) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)


def skip(image_id: str, err: Unreadable) -> Skipped:
    """One warning line for a file the search leaves out, and its record."""
    warn(f"skipped: {err.what}", image_id, err.fix)
    return Skipped(image_id, err.what)


def _files(folder: Path, bounds: Bounds | None = None):
    """Every file under `folder` (links to folders followed once), hidden ones left out, in name
    order; with `bounds`, nothing of the folders they exclude (the page's own outputs)."""
    seen = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = Path(current).resolve()
        if real in seen or (bounds is not None and bounds.excludes(real)):
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(current) / name


def reference_objects(root: Path, references: Path, bounds: Bounds | None = None) -> dict[str, list[ReferenceFrame]]:
    """Each object's shots with their prompts, read and checked."""
    files = sorted(p for p in references.iterdir() if p.is_file() and not p.name.startswith("."))
    photos = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES and not _is_mask(p, files)]
    for raw in (p for p in files if p.suffix.lower() in RAW_SUFFIXES):
        raise UserError("a reference photo is a camera RAW file", str(raw), "export it as JPEG or HEIC")
    if not photos:
        raise UserError("no reference photo", str(references), f"add {LAYOUT}")
    stems = {p.stem for p in photos}
    objects: dict[str, list[ReferenceFrame]] = {}
    for photo in photos:
        if bounds is not None:
            bounds.check(photo)
        shot = re.fullmatch(r"(.+)_(\d+)", photo.stem)
        name = shot.group(1) if shot and int(shot.group(2)) >= 2 and shot.group(1) in stems else photo.stem
        objects.setdefault(name, []).append(ReferenceFrame(str(photo.relative_to(root)), _prompt(photo, files)))
    return objects


def _is_mask(path: Path, files: list[Path]) -> bool:
    """`<stem>.mask.png`, or `<stem>.png` beside a photo `<stem>.<other format>`."""
    if path.name.lower().endswith(".mask.png"):
        return True
    return path.suffix.lower() == ".png" and any(p.stem == path.stem and p.suffix.lower() in PHOTO_SUFFIXES
                                                 and p.suffix.lower() != ".png" for p in files)


def _prompt(photo: Path, files: list[Path]):
    masks = [p for p in (photo.with_name(f"{photo.stem}.mask.png"), photo.with_suffix(".png"))
             if p != photo and p in files]
    prompt_file = photo.with_suffix(".txt")
    sources = masks + ([prompt_file] if prompt_file in files else [])
    if len(sources) != 1:
        raise UserError("a reference photo needs exactly one of a mask and a prompt file", str(photo),
                        f"add {photo.stem}.mask.png (the object's mask) or {photo.stem}.txt (a box and/or points)"
                        + (f", not {' and '.join(p.name for p in sources)}" if sources else ""))
    height, width = image_size(photo, exif=True)
    if masks:
        return mask_prompt(read_mask(masks[0], exif=True), height, width, str(masks[0]))
    try:
        text = prompt_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"unreadable prompt file ({err})", str(prompt_file), "write it as plain text") from None
    return parse_prompt(text, height, width, str(prompt_file))
