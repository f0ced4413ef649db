"""PerSeg (PerSAM, Zhang et al. 2024): `Images/<object>/NN.jpg`, `Annotations/<object>/NN.png`.

Protocol (PerSAM's `persam.py` and `eval_miou.py`): per object, the reference is image
`--ref_idx` (default 00) with its mask as the prompt; every other image of the object is a target.
With k shots, the references are the reference image and the next k-1 images in name order; the
rest are targets. Images and masks are read EXIF-oriented, as PerSAM's OpenCV `imread` reads them.
"""
from pathlib import Path

from utils.errors import UserError
from utils.images import read_mask
from utils.loaders.common import Episode, Sample, check_same_size, require_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_perseg(root, ref_idx: str = "00", shots: int = 1) -> list[Episode]:
    root = require_dir(root, "--data_path", "download PerSeg as datasets/perseg/README.md says")
    images_dir = require_dir(root / "Images", "--data_path", "a PerSeg root holds Images/ and Annotations/")
    masks_dir = require_dir(root / "Annotations", "--data_path", "a PerSeg root holds Images/ and Annotations/")
    if shots < 1:
        raise UserError("--shots must be at least 1", f"--shots {shots}", "pass --shots 1 or more")
    episodes = []
    for object_dir in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        images = sorted(p for p in object_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        by_stem = {p.stem: p for p in images}
        if ref_idx not in by_stem:
            raise UserError(f"object {object_dir.name} has no reference image {ref_idx}",
                            str(object_dir), "add it or choose another --ref_idx")
        if shots >= len(images):
            raise UserError(f"--shots {shots} leaves no target for object {object_dir.name} "
                            f"({len(images)} images)", f"--shots {shots}",
                            f"use --shots below {len(images)}")
        start = images.index(by_stem[ref_idx])
        ordered = images[start:] + images[:start]
        samples = [_sample(p, masks_dir / object_dir.name) for p in ordered]
        if not samples[0].mask.any():
            raise UserError("reference mask is empty", str(masks_dir / object_dir.name / f"{samples[0].image_path.stem}.png"),
                            "the reference needs the object's mask; fix the annotation")
        episodes.append(Episode(object_dir.name, samples[:shots], samples[shots:]))
    if not episodes:
        raise UserError("no object folders", str(images_dir), "a PerSeg root holds Images/<object>/NN.jpg")
    return episodes


def _sample(image_path: Path, mask_dir: Path) -> Sample:
    mask_path = mask_dir / f"{image_path.stem}.png"
    if not mask_path.is_file():
        raise UserError("mask not found for image", str(image_path),
                        f"add {mask_path} (PerSeg masks are Annotations/<object>/NN.png)")
    # read now (not at its turn in the loop): a broken mask stops the run before any work
    mask = read_mask(mask_path, exif=True)
    check_same_size(mask.shape, image_path, str(mask_path), exif=True)
    return Sample(image_path, mask, exif=True)
