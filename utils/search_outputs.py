"""What a search of your library writes (utils/photo_search.py searches; utils/page.py shows it).

Outputs in <output_dir>:
    rankings.csv   object, rank, image, score, found, dinov2_score, time: every candidate of every
                   object, by decreasing SAM2 score (ties: name order); time: a video's best frame,
                   in seconds from its start
    found.json     {object: [{"image", "score", "iou", "object_score_logit", "mask"}, ...]}, the
                   found photos and videos, best first; a video's entry holds instead of "mask"
                   its best frame ("frame", "time"), "ranges" ([start, end] seconds where the object
                   is present) and "frames" (each found frame's "frame", "time", "score", "mask")
    masks/<object>/references/<shot file stem>.png        the reference masks (0/255)
    masks/<object>/<photo path under images/>.png         0/255 at the photo's size
    masks/<object>/<video path under images/>/<frame number, 6 digits>.png
    vis/<object>.png   with visualize N: its references, then its N best photos and videos (a
                       video's best frame) with the mask overlaid (found ones framed green);
                       vis/<object>/<video path under images/>.png: a found video's N best frames
Paths under images/ lose their extension; two files of one folder that share a stem (a Live
Photo's .HEIC and .MOV) keep it.
"""
import csv
import io
from pathlib import Path

import numpy as np
import torch

from utils.images import read_mask
from utils.io import atomic_write_bytes, save_png
from utils.loaders.custom import Library
from utils.video import sampled_frames
from utils.vis import overlay, ranking_strip, stack_rows, with_prompt

RANKING_COLUMNS = ["object", "rank", "image", "score", "found", "dinov2_score", "time"]


def mask_image(mask) -> np.ndarray:
    """A mask (bool, or logits > 0) as a 0/255 PNG's pixels."""
    mask = mask.numpy() > 0 if isinstance(mask, torch.Tensor) else np.asarray(mask, bool)
    return mask.astype(np.uint8) * 255


def reference_mask_file(name: str, image: str) -> str:
    return str(Path("masks") / name / "references" / f"{Path(image).stem}.png")


def photo_mask_file(library: Library, name: str, image: str) -> str:
    """Where a found photo's mask goes, relative to the output folder."""
    return str(Path("masks") / name / f"{library.result_stem(image)}.png")


def video_mask_folder(library: Library, name: str, video: str) -> Path:
    return Path("masks") / name / library.result_stem(video)


def video_mask_file(library: Library, name: str, video: str, number: int) -> str:
    return str(video_mask_folder(library, name, video) / f"{number:06d}.png")


def presence_ranges(frames: list[dict]) -> list[list[float]]:
    """[start, end] seconds of each run of consecutive sampled frames where the object is found."""
    ranges, previous = [], False
    for frame in frames:
        if frame["found"]:
            if previous:
                ranges[-1][1] = frame["time"]
            else:
                ranges.append([frame["time"], frame["time"]])
        previous = frame["found"]
    return ranges


def rank(library: Library, candidates: dict, results: dict) -> dict[str, list[dict]]:
    """Per object, its readable candidates by decreasing SAM2 score (ties: name order), with their
    numbers."""
    rankings = {}
    for name in library.objects:
        rows = [{"image": file, **results[(name, file)], "found": results[(name, file)]["object_score_logit"] > 0
                 or any(f["found"] for f in results[(name, file)].get("frames", [])), "dinov2_score": cosine}
                for file, cosine in candidates[name].items() if not results[(name, file)]["unreadable"]]
        rows.sort(key=lambda r: (-r["score"], r["image"]))
        rankings[name] = rows
    return rankings


def found_entry(library: Library, name: str, row: dict) -> dict:
    entry = {key: row[key] for key in ("image", "score", "iou", "object_score_logit")}
    if "frames" not in row:
        return {**entry, "mask": photo_mask_file(library, name, row["image"])}
    found = [f for f in row["frames"] if f["found"]]
    return {**entry, "frame": row["frame"], "time": row["time"], "ranges": presence_ranges(row["frames"]),
            "frames": [{"frame": f["frame"], "time": f["time"], "score": f["score"],
                        "mask": video_mask_file(library, name, row["image"], f["frame"])} for f in found]}


def write_rankings(path: Path, rankings: dict) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(RANKING_COLUMNS)
    for name, ranked in rankings.items():
        for position, row in enumerate(ranked, start=1):
            writer.writerow([name, position, row["image"], f"{row['score']:.6f}", int(row["found"]),
                             "" if row["dinov2_score"] is None else f"{row['dinov2_score']:.6f}",
                             f"{row['time']:.3f}" if "time" in row else ""])
    atomic_write_bytes(path, text.getvalue().encode())


def video_frame_images(library: Library, video: str, fps: float, numbers: set[int]) -> dict:
    """Some sampled frames of a video, decoded again (for pictures): {number: image}."""
    images = {}
    for frame in sampled_frames(library.path(video), fps):
        if frame.number in numbers:
            images[frame.number] = frame.image
            if len(images) == len(numbers):
                break
    return images


def video_frame_overlays(output_dir: Path, library: Library, name: str, video: str, fps: float,
                         numbers: set[int]) -> dict:
    """Some sampled frames of a video with the object's mask overlaid where found: {number: image}."""
    overlays = {}
    for number, image in video_frame_images(library, video, fps, numbers).items():
        mask_file = output_dir / video_mask_file(library, name, video, number)
        overlays[number] = overlay(image, read_mask(mask_file)) if mask_file.is_file() else image
    return overlays


def result_overlay(output_dir: Path, library: Library, name: str, row: dict, fps: float):
    """A ranked photo with its mask overlaid where found; a video's best frame likewise."""
    if "frames" in row:
        return video_frame_overlays(output_dir, library, name, row["image"], fps, {row["frame"]})[row["frame"]]
    photo = library.open(row["image"])
    return overlay(photo, read_mask(output_dir / photo_mask_file(library, name, row["image"]))) if row["found"] \
        else photo


def reference_pictures(library: Library, name: str, masks: list) -> list:
    """An object's reference photos with their prompts drawn (box, points) and the mask tracked."""
    return [with_prompt(library.open(shot.image), mask, shot.prompt.box, shot.prompt.points, shot.prompt.labels)
            for shot, mask in zip(library.objects[name], masks)]


def visualize(output_dir: Path, library: Library, rankings: dict, shot_masks: dict, count: int, fps: float) -> None:
    """vis/: each object's references and its `count` best results; a found video's best frames."""
    for name, ranked in rankings.items():
        shots = reference_pictures(library, name, shot_masks[name])
        top = [result_overlay(output_dir, library, name, row, fps) for row in ranked[:count]]
        rows = [ranking_strip(shots[0], top, [r["found"] for r in ranked[:count]])]
        save_png(output_dir / "vis" / f"{name}.png", stack_rows(rows + [ranking_strip(s, []) for s in shots[1:]]))
        for row in (r for r in ranked[:count] if "frames" in r and r["found"]):
            best = sorted((f for f in row["frames"] if f["found"]), key=lambda f: -f["score"])[:count]
            overlays = video_frame_overlays(output_dir, library, name, row["image"], fps, {f["frame"] for f in best})
            strip = [overlays[f["frame"]] for f in best]
            save_png(output_dir / "vis" / name / f"{library.result_stem(row['image'])}.png",
                     ranking_strip(shots[0], strip, [True] * len(strip)))
