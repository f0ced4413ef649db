"""PerMIRS (the PDM paper, built from BURST): `<root>/<video_id>/{0,1,2}.jpg` + `masks.npz.npy`,
a pickled list of 3 dicts `{track_id: bool HxW}`, one per frame (the first track is the object).

The masks file is a pickle: it is read with a restricted unpickler (utils/safe_pickle.py) that
rebuilds arrays and containers only. Frames are read as PDM reads them (PIL, no EXIF rotation),
and given to the model as PDM gives them to its own (`pdm_input`, `--permirs_frames pdm`, the
default) or whole (`full`).
"""
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.loaders.common import Episode, Sample, check_same_size, require_dir
from utils.metrics import PDM_CROP_SIZE, PDM_MIN_CROP_FRACTION, pdm_crop, pdm_crop_box, pdm_crop_fraction
from utils.safe_pickle import load_npy

NUM_FRAMES = 3
FRAMES = ("pdm", "full")  # what the model is given: PDM's 512 x 512 crops, or whole frames


@dataclass
class Video:
    video_id: str
    frames: list[Path]
    masks: list[np.ndarray]  # bool, one per frame, at the frame's size

    @cached_property
    def crop_fractions(self) -> list[float]:
        """Each mask's size as PDM measures it: its share of PDM's 512 x 512 crop of the frame."""
        return [pdm_crop_fraction(mask) for mask in self.masks]


def load_permirs_videos(root) -> list[Video]:
    root = require_dir(root, "--data_path", "download PerMIRS as datasets/permirs/README.md says")
    videos = [_load_video(d) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    if not videos:
        raise UserError("no video folders", str(root), "a PerMIRS root holds <video_id>/{0,1,2}.jpg")
    return videos


def _load_video(video_dir: Path) -> Video:
    frames = [video_dir / f"{i}.jpg" for i in range(NUM_FRAMES)]
    for frame in frames:
        if not frame.is_file():
            raise UserError("video folder is missing a frame", str(frame),
                            "each PerMIRS video needs 0.jpg, 1.jpg, 2.jpg and masks.npz.npy")
    masks_path = video_dir / "masks.npz.npy"
    if not masks_path.is_file():
        raise UserError("video folder has no masks file", str(masks_path),
                        "each PerMIRS video needs 0.jpg, 1.jpg, 2.jpg and masks.npz.npy")
    masks = _frame_masks(load_npy(masks_path), masks_path)
    for frame, mask in zip(frames, masks):
        check_same_size(mask.shape, frame, str(masks_path))
    return Video(video_dir.name, frames, masks)


def _frame_masks(content, masks_path: Path) -> list[np.ndarray]:
    expected = "a list of 3 dicts {track_id: bool HxW array}"
    if content.ndim != 1 or len(content) != NUM_FRAMES or not all(isinstance(d, dict) and d for d in content):
        raise UserError(f"masks file is not {expected}", str(masks_path), "re-download PerMIRS")
    masks = [next(iter(d.values())) for d in content]
    if any(not isinstance(m, np.ndarray) or m.ndim != 2 for m in masks):
        raise UserError(f"masks file is not {expected}", str(masks_path), "re-download PerMIRS")
    return [m.astype(bool) for m in masks]


def pdm_input(frame: Path, mask: np.ndarray) -> Sample:
    """A PerMIRS frame and its mask as PDM gives them to its model and measures them. PDM builds
    every frame as `load_im_into_format_from_path(f"{vid}/{f}.jpg", offsets=curr_offsets)
    .resize((512, 512)).convert("RGB")` (`pdm_permis.py`, `pdm_permir.py`), the offsets coming
    from `center_crop` of that frame's own mask (`min_obj_x`, `max_obj_x` of `bbox_from_mask`),
    and its mask as `m.resize((512, 512))` of the mask image cut the same way (`masks_img_size`,
    the prompt and the ground truth). The crop is `pdm_crop_box` (utils/metrics.py)."""
    box = pdm_crop_box(mask)
    return Sample(frame, pdm_crop(mask, box), input_box=box, input_size=PDM_CROP_SIZE)


def frame_sample(frame: Path, mask: np.ndarray, frames: str) -> Sample:
    """A frame as the model is given it: PDM's crop (`pdm_input`), or the whole frame, then
    measured on PDM's crop (`eval_box`)."""
    if frames == "pdm":
        return pdm_input(frame, mask)
    if frames == "full":
        return Sample(frame, mask, eval_box=pdm_crop_box(mask))
    raise ValueError(f"unknown frames {frames!r}, expected one of {FRAMES}")


def permis_episodes(videos: list[Video], shots: int = 1, frames: str = "pdm") -> tuple[list[Episode], int]:
    """PerMIS (PDM's `pdm_permis.py`): reference frame 0 (its mask as the prompt), target frame 1;
    with k shots, frames 0..k-1 are references and frame k the target; every frame as `frames`
    says (`frame_sample`). A target whose mask covers under 0.5% of PDM's square crop is skipped.
    Returns the episodes and the number of skipped targets."""
    if not 1 <= shots < NUM_FRAMES:
        raise UserError(f"PerMIS videos have {NUM_FRAMES} frames, so 1 or 2 shots",
                        f"--shots {shots}", "pass --shots 1 (the official protocol) or 2")
    episodes, skipped = [], 0
    for video in videos:
        if video.crop_fractions[shots] < PDM_MIN_CROP_FRACTION:
            skipped += 1
            continue
        for frame, mask in zip(video.frames[:shots], video.masks[:shots]):
            if not mask.any():
                raise UserError("reference mask is empty", f"{video.frames[0].parent}/masks.npz.npy "
                                f"frame {frame.stem}", "fix the masks file or remove the video")
        samples = [frame_sample(f, m, frames) for f, m in zip(video.frames[:shots + 1], video.masks[:shots + 1])]
        episodes.append(Episode(video.video_id, samples[:shots], samples[shots:]))
    return episodes, skipped


@dataclass
class RetrievalSplit:
    """PerMIR: one query per video (its frame with the largest mask, the mask as the prompt) and
    a gallery of every other frame of every video (their masks are not used); the label of an
    image is its video id. Mask sizes are PDM's: the share of its square crop of the frame (`pdm_crop_fraction`)."""
    queries: list[Sample]
    query_labels: list[str]
    gallery: list[Sample]
    gallery_labels: list[str]


def permir_split(videos: list[Video], frames: str = "pdm") -> tuple[RetrievalSplit, int]:
    """The PerMIR split as PDM's `pdm_permir.py` makes it: a video with any mask under 0.5% of
    its crop is dropped; the query is the frame with the largest crop fraction (ties: the earliest
    frame, as numpy's argmax); every frame as `frames` says (`frame_sample`). Returns the split
    and the number of dropped videos."""
    split = RetrievalSplit([], [], [], [])
    dropped = 0
    for video in videos:
        if min(video.crop_fractions) < PDM_MIN_CROP_FRACTION:
            dropped += 1
            continue
        query = int(np.argmax(video.crop_fractions))
        for f, (frame, mask) in enumerate(zip(video.frames, video.masks)):
            sample = frame_sample(frame, mask, frames)
            if f == query:
                split.queries.append(sample)
                split.query_labels.append(video.video_id)
            else:
                split.gallery.append(sample)
                split.gallery_labels.append(video.video_id)
    if not split.queries:
        raise UserError("every video was dropped (a mask under 0.5% of its frame's crop)",
                        str(videos[0].frames[0].parent.parent), "check the PerMIRS masks files")
    return split, dropped
