"""Your library: find each object of a folder (README "Your own photos", utils/loaders/custom.py) in
its photos and videos, ranking and segmenting in one pass. search_photos.py and app.py both run
`search`.

For each object:
1. Its references. SAM2 makes the mask of each box or point prompt on its reference photo: that
   frame's own output, what the official predictor returns when the prompt is added, and what the
   pseudo-video tracks. It is written with the mask prompts' masks (`references_only` stops here,
   so that a person can check them before a long search).
2. Its candidates: every photo and video, or with DINOv2 its `shortlist` files of highest cosine
   with its reference crops (each shot cut to its box, or to its mask's bounding box: the
   reference mask's for points), found in the folder's persistent index (utils/photo_index.py; a
   video by its best frame).
3. A photo is the last frame of the pseudo-video [references, photo], scored once, each photo
   encoded once however many objects look for it. A video is tracked forward through its frames
   sampled at `video_fps`, [references, frame, frame, ...] (utils/pseudo_video.py `track_frame`),
   each frame encoded once for all the objects that look for it. A video scores as its best frame.
Photos and models see images decoded reduced where the format allows (utils/images.py), unless
`full_decode`. Work is saved in parts (<output_dir>/parts/: a killed search resumes; under
torchrun, chunks of photos and single videos, a long video being one unit of work, are split
across processes). SAM2's object score > 0 means "found"; masks are written as they are made. A
photo or video that cannot be read is skipped with one line, and listed (`skipped`).
Outputs: utils/search_outputs.py.
"""
import hashlib
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from utils import dinov2
from utils.dist import Run, barrier, broadcast, gather, unfinished_share
from utils.feed import VideoFeed
from utils.images import Unreadable, mask_box
from utils.io import save_json, save_png
from utils.loaders.custom import Library, Skipped, skip
from utils.loops import batched, progress, worker_map
from utils.photo_index import Embedded, PhotoIndex, best_files, file_stats
from utils.prompts import Prompt
from utils.pseudo_video import Frame, PseudoVideo, Reference, presence_score, prepare_frame
from utils.sam2_run import Sam2Run, chunk_size
from utils.search_outputs import (found_entry, mask_image, photo_mask_file, rank, reference_mask_file,
                                  video_mask_file, video_mask_folder, visualize, write_rankings)

LONG_VIDEO = 2**31  # frames, for a video longer than SAM2's object-pointer window


@dataclass(frozen=True)
class SearchOptions:
    score: str = "iou"  # the SAM2 score that ranks (utils/pseudo_video.py presence_score)
    shortlist: int = 50  # with DINOv2: candidates per object
    chunk_size: int | None = None  # photos per saved part (None: utils/sam2_run.py chunk_size)
    visualize: int = 0
    index_dir: Path | None = None  # default: <photo folder>/.index
    index_chunk: int = 1024  # files per index shard
    dinov2_resolution: int = 224
    dinov2_preprocess: str = "short_side_crop"
    dinov2_batch_size: int = 32
    video_fps: float = 2.0  # video frames sampled per second (0: every frame)
    full_decode: bool = False  # decode photos whole even where a reduced decode would do
    references_only: bool = False  # write the reference masks and stop


@dataclass
class Models:
    """The SAM2 run, and DINOv2 with its name if a shortlist is asked for."""
    sam2: Sam2Run
    dinov2: torch.nn.Module | None = None
    dinov2_name: str | None = None


def search(library: Library, models: Models, options: SearchOptions, output_dir: Path, run: Run,
           interrupt: Callable[[], None] | None = None) -> dict | None:
    """Run the search (see the module docstring); rank 0 returns its summary, the others None.
    `interrupt()` is called between units of work (it may raise to stop the search)."""
    output_dir, check = Path(output_dir), interrupt or (lambda: None)
    engine = models.sam2.engine
    side = None if options.full_decode else engine.image_size
    open_frame = lambda image_id: library.decode(image_id, side)
    shot_masks = reference_masks(library, engine, open_frame, output_dir) if run.is_main else None
    if options.references_only:
        return {"references": shot_masks} if run.is_main else None
    files = library.photos + library.videos
    if models.dinov2 is not None:
        candidates, update, unreadable = shortlists(library, models.dinov2, models.dinov2_name, options, shot_masks,
                                                    run, check)
    else:
        candidates, update, unreadable = {name: dict.fromkeys(files) for name in library.objects}, None, []
    photo_pairs, video_objects = work_units(library, candidates)
    size = chunk_size(options.chunk_size, len(photo_pairs))
    chunks = [[pair for photo in chunk for pair in photo] for chunk in batched(photo_pairs, size)]
    settings = {"data_path": str(library.root), "search": search_digest(library, candidates, options),
                "chunk_size": size, "full_decode": options.full_decode}
    photo_parts = models.sam2.parts(output_dir / "parts", **settings)

    def write_mask(pair, result, row) -> None:
        if result.object_score_logit[row] > 0:
            save_png(output_dir / photo_mask_file(library, *pair), mask_image(result.mask_logit(row)))
        check()

    models.sam2.score_in_parts(photo_parts, chunks, library.objects, open_frame, with_masks=True,
                               on_result=write_mask, desc="photos", keep_going=(Unreadable,))
    video_parts = models.sam2.parts(output_dir / "parts" / "videos", **settings, video_fps=options.video_fps)
    videos = list(video_objects)
    track_videos(library, models.sam2, video_objects, video_parts, unfinished_share(video_parts, len(videos), run),
                 open_frame, options.video_fps, output_dir, check)
    work = models.sam2.work()
    unreadable = [s for share in gather(unreadable) for s in share]
    barrier()
    if not run.is_main:
        return None
    results = photo_results(photo_parts, chunks, options.score)
    results.update(video_results(video_parts, video_objects, options.score))
    skipped = library.skipped + unreadable + [Skipped(image, reason) for image, reason in failed_files(results)]
    rankings = rank(library, candidates, results)
    write_rankings(output_dir / "rankings.csv", rankings)
    found = {name: [found_entry(library, name, row) for row in ranked if row["found"]]
             for name, ranked in rankings.items()}
    save_json(output_dir / "found.json", found)
    if options.visualize:
        visualize(output_dir, library, rankings, shot_masks, options.visualize, options.video_fps)
    return {"photos": len(library.photos), "videos": len(library.videos), "pairs": len(results), **work,
            "index": update, "rankings": rankings, "found": found, "references": shot_masks,
            "skipped": unique_skipped(skipped)}


def summary_metrics(summary: dict, score: str) -> dict:
    """The numbers of a search, as metrics.json holds them."""
    return {"photos": summary["photos"], "videos": summary["videos"], "pairs": summary["pairs"], "score": score,
            "objects": {name: {"searched": len(ranked), "found": len(summary["found"][name]),
                               "top": [r["image"] for r in ranked[:5]]}
                        for name, ranked in summary["rankings"].items()},
            "skipped": [s.record() for s in summary["skipped"]]}


# -- references ---------------------------------------------------------------------------------

def shot_masks_of(engine: PseudoVideo, frames: list[Frame], prompts: list[Prompt]) -> list[np.ndarray]:
    """The mask SAM2 tracks for each reference frame: a mask prompt's own mask, else what SAM2 makes
    of the box or points on that frame (`PseudoVideo.reference_mask`: each reference frame is
    prompted on its own, so one frame alone gives the same mask as with the others)."""
    clicked = [i for i, prompt in enumerate(prompts) if prompt.mask is None]
    masks = [prompt.mask for prompt in prompts]
    if clicked:
        reference = engine.encode_reference([frames[i] for i in clicked], [prompts[i] for i in clicked])
        for index, i in enumerate(clicked):
            masks[i] = engine.reference_mask(reference, index)
    return masks


def reference_masks(library: Library, engine: PseudoVideo, open_frame, output_dir: Path) -> dict[str, list]:
    """Each object's reference masks (see `shot_masks_of`), written to
    masks/<object>/references/<shot stem>.png."""
    masks = {}
    for name, shots in library.objects.items():
        frames = [prepare_frame(open_frame(shot.image), engine.image_size) for shot in shots]
        masks[name] = shot_masks_of(engine, frames, [shot.prompt for shot in shots])
        for shot, mask in zip(shots, masks[name]):
            save_png(output_dir / reference_mask_file(name, shot.image), mask_image(mask))
    return masks


def reference_crop(library: Library, image: str, prompt: Prompt, mask: np.ndarray):
    """A reference photo cut to its object, what DINOv2 sees: its box, else its mask's bounding
    box (the whole photo if SAM2 made no mask of its points)."""
    photo = library.open(image)
    if prompt.box is not None:
        return photo.crop(tuple(int(round(v)) for v in prompt.box))
    return photo.crop(mask_box(mask)) if mask.any() else photo


# -- the DINOv2 shortlist -------------------------------------------------------------------------

def shortlists(library: Library, model, model_name: str, options: SearchOptions, shot_masks: dict | None, run: Run,
               check=lambda: None) -> tuple[dict, dict, list[Skipped]]:
    """Each object's candidates, {object: {file: DINOv2 cosine}}, the index update's counts, and
    the files DINOv2 could not read. The index is updated by every rank (each embeds a share of
    the new files); rank 0 searches it and tells the others."""
    side = None if options.full_decode else options.dinov2_resolution
    index = PhotoIndex(options.index_dir or library.root / ".index",
                       {"model": model_name, "resolution": options.dinov2_resolution,
                        "preprocess": options.dinov2_preprocess, "amp": run.amp, "full_decode": options.full_decode,
                        "video_fps": options.video_fps})
    files = library.photos + library.videos
    embed = lambda batch, desc: embed_files(library, batch, model, options, side, run, desc, check)
    update, unreadable = index.update(file_stats(library.root, files), embed, options.index_chunk, run)
    candidates = None
    if run.is_main:
        rows, vectors = index.load(set(files))
        candidates = {}
        for name, shots in library.objects.items():
            crops = [lambda s=s, m=m: reference_crop(library, s.image, s.prompt, m)
                     for s, m in zip(shots, shot_masks[name])]
            queries = dinov2.embed_images(model, crops, options.dinov2_resolution, options.dinov2_preprocess,
                                          options.dinov2_batch_size, run.amp)
            candidates[name] = best_files(rows, vectors, queries, options.shortlist) if rows else {}
    return broadcast(candidates), update, unreadable


def embed_files(library: Library, files: list[str], model, options: SearchOptions, side: int | None, run: Run,
                desc: str, check) -> Embedded:
    """DINOv2 rows of photos (one each) and videos (one per sampled frame); files that cannot be
    read are skipped (one line each)."""
    preprocess = lambda image: dinov2.preprocess(image, options.dinov2_resolution, options.dinov2_preprocess,
                                                 model.config.patch_size)
    embed = lambda pixels: dinov2.embed_batches(model, pixels, options.dinov2_batch_size, run.amp)
    photo_set = set(library.photos)
    photos, videos = [f for f in files if f in photo_set], [f for f in files if f not in photo_set]
    paths, frames, blocks, unreadable = [], [], [], []
    bar = progress(total=len(files), desc=run.label(desc), unit="file")

    def readable(items, names):
        for name, item in zip(names, items):
            check()
            bar.update(1)
            if isinstance(item, Unreadable):
                unreadable.append(skip(name, item))
            else:
                paths.append(name)
                frames.append(-1)
                yield item

    decoded = worker_map(lambda f: preprocess(library.decode(f, side).image), photos, run.num_workers,
                         keep_going=(Unreadable,))
    blocks.append(embed(readable(decoded, photos)))
    for video, items in VideoFeed(library.path, options.video_fps, preprocess, run.num_workers).videos(videos):
        numbers, pixels = [], []
        for item in items:
            if isinstance(item, Unreadable):
                unreadable.append(skip(video, item))
                break
            numbers.append(item.number)
            pixels.append(item.pixels)
            check()
        else:
            blocks.append(embed(pixels))
            paths += [video] * len(numbers)
            frames += numbers
        bar.update(1)
    bar.close()
    return Embedded(paths, frames, np.concatenate(blocks), unreadable)


# -- scoring ------------------------------------------------------------------------------------

def work_units(library: Library, candidates: dict) -> tuple[list[list], dict[str, list[str]]]:
    """The photos' pairs, photo by photo (in name order, so that a part holds whole photos), and
    each video's objects."""
    photo_set, by_photo, video_objects = set(library.photos), {}, {}
    for name, files in candidates.items():
        for file in files:
            if file in photo_set:
                by_photo.setdefault(file, []).append((name, file))
            else:
                video_objects.setdefault(file, []).append(name)
    return [by_photo[p] for p in sorted(by_photo)], {v: video_objects[v] for v in sorted(video_objects)}


def track_videos(library: Library, sam2: Sam2Run, video_objects: dict, parts, units: list[int], open_frame,
                 fps: float, output_dir: Path, check) -> None:
    """Track each object through each video of `units` (indices into `video_objects`), one
    saved part per video: per (object, sampled frame) its numbers; found frames' masks written."""
    engine, videos, memories = sam2.engine, list(video_objects), {}
    feed = VideoFeed(library.path, fps, lambda image: prepare_frame(image, engine.image_size).pixels,
                     sam2.run.num_workers, engine.device)
    for unit, (video, items) in zip(units, feed.videos([videos[u] for u in units])):
        names = video_objects[video]
        for name in names:
            if name not in memories:
                shots = library.objects[name]
                memories[name] = engine.encode_reference([prepare_frame(open_frame(s.image), engine.image_size)
                                                          for s in shots], [s.prompt for s in shots])
        parts.save(unit, **track_video(engine, [memories[n] for n in names], names, library, video, items,
                                       output_dir, check))
        sam2.pairs_scored += len(names)
    barrier()


def track_video(engine: PseudoVideo, references: list[Reference], names: list[str], library: Library, video: str,
                items, output_dir: Path, check) -> dict[str, np.ndarray]:
    """One video's frames tracked for each object (see `search`); a video that turns out unreadable
    gives its reason (its masks written so far are removed)."""
    tracks = [engine.track(reference) for reference in references]
    buffered, rows = list(itertools.islice(items, engine.model.max_obj_ptrs_in_encoder)), []
    # how many frames a video has changes its numbers until it has SAM2's object-pointer window
    # (`track_frame`): decoded ahead that far, a shorter video gives its length, a longer one any
    # larger number
    frames_in_video = len(buffered) if len(buffered) < engine.model.max_obj_ptrs_in_encoder else LONG_VIDEO
    stream = itertools.chain(buffered, items)
    with progress(desc=f"{video}", unit="frame", leave=False) as bar:
        for position, item in enumerate(stream):
            if isinstance(item, Unreadable):
                for name in names:
                    shutil.rmtree(output_dir / video_mask_folder(library, name, video), ignore_errors=True)
                skip(video, item)
                return {"unreadable": np.array(item.what)}
            frame = Frame(item.pixels, item.height, item.width)
            for k, result in enumerate(engine.track_frame(tracks, frame, position, frames_in_video)):
                logit = result.object_score_logit[0].item()
                rows.append((k, item.number, item.time, result.iou[0].item(), logit))
                if logit > 0:
                    save_png(output_dir / video_mask_file(library, names[k], video, item.number),
                             mask_image(result.mask_logit(0)))
            bar.update(1)
            check()
    table = np.array(rows, np.float64).reshape(-1, 5)
    return {"object": table[:, 0].astype(np.int64), "frame": table[:, 1].astype(np.int64), "time": table[:, 2],
            "iou": table[:, 3].astype(np.float32), "object_score_logit": table[:, 4].astype(np.float32),
            "unreadable": np.array("")}


def photo_results(parts, chunks: list, score: str) -> dict:
    """{(object, photo): result row} from the photos' parts."""
    results = {}
    for c, chunk in enumerate(chunks):
        saved = parts.load(c)
        scores = presence_score(torch.from_numpy(saved["iou"]), torch.from_numpy(saved["object_score_logit"]),
                                score).tolist()
        for j, pair in enumerate(chunk):
            results[pair] = {"score": scores[j], "iou": float(saved["iou"][j]),
                             "object_score_logit": float(saved["object_score_logit"][j]),
                             "unreadable": str(saved["unreadable"][j])}
    return results


def video_results(parts, video_objects: dict, score: str) -> dict:
    """{(object, video): result row}: the best sampled frame's numbers (ties: the earlier frame),
    and the frames where the object is found."""
    results = {}
    for unit, (video, names) in enumerate(video_objects.items()):
        saved = parts.load(unit)
        for k, name in enumerate(names):
            if str(saved["unreadable"]):
                results[(name, video)] = {"unreadable": str(saved["unreadable"])}
                continue
            mine = saved["object"] == k
            iou, logit = saved["iou"][mine], saved["object_score_logit"][mine]
            scores = presence_score(torch.from_numpy(iou), torch.from_numpy(logit), score).numpy()
            best = int(np.argmax(scores))
            frames = [{"frame": int(n), "time": round(float(t), 3), "score": float(s), "found": bool(l > 0)}
                      for n, t, s, l in zip(saved["frame"][mine], saved["time"][mine], scores, logit)]
            results[(name, video)] = {"score": float(scores[best]), "iou": float(iou[best]),
                                      "object_score_logit": float(logit[best]), "frame": frames[best]["frame"],
                                      "time": frames[best]["time"], "frames": frames, "unreadable": ""}
    return results


def failed_files(results: dict) -> list[tuple[str, str]]:
    return [(image, row["unreadable"]) for (_, image), row in results.items() if row["unreadable"]]


def unique_skipped(skipped: list[Skipped]) -> list[Skipped]:
    """Each skipped file once, in name order."""
    return sorted({s.file: s for s in skipped}.values(), key=lambda s: s.file)


def search_digest(library: Library, candidates: dict, options: SearchOptions) -> str:
    """A digest of what a search scores: its (object, file) pairs, every file's size and
    modification time, each reference's prompt and the video frame rate, so that a rerun reuses
    parts only if none of them changed."""
    pairs = sorted((name, file) for name, files in candidates.items() for file in files)
    digest = hashlib.sha1(json.dumps([pairs, options.video_fps]).encode())
    shots = {f.image for shots in library.objects.values() for f in shots}
    for image, (size, mtime) in file_stats(library.root, sorted({p for _, p in pairs} | shots)).items():
        digest.update(f"{image}\t{size}\t{mtime}\n".encode())
    for name, shots in library.objects.items():
        for frame in shots:
            prompt = frame.prompt
            digest.update(f"{name}\t{frame.image}\t{prompt.text() if prompt.mask is None else ''}\n".encode())
            digest.update(np.packbits(prompt.mask).tobytes() if prompt.mask is not None else b"")
    return digest.hexdigest()
