"""Videos: decoded frame by frame as written (lossless H.264), sampled at --video_fps, turned upright
by a phone's rotation; tracked as the official SAM2VideoPredictor tracks [references, frames...]
(every frame's mask and scores, one shot and k shots, mask, box and point prompts); each frame
encoded once for every object; searched by search_photos.py with masks, times and ranges."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

import search_photos
from media import moving_object, moving_scenes, rotate_clip, write_clip
from tiny_sam2 import TINY_CFG, TINY_OVERRIDES
from utils.images import read_mask
from utils.loaders.custom import load_library
from utils.prompts import Prompt
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model, lift_object_scores
from utils.video import probe, sampled_frames

HEIGHT, WIDTH, FRAMES = 72, 96, 21  # more frames than SAM2's 16 object pointers and 7 memories


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A lossless clip of an object moving (absent from its middle third), and a reference photo
    of the object elsewhere, with its mask."""
    folder = tmp_path_factory.mktemp("clip")
    frames = moving_scenes(FRAMES, HEIGHT, WIDTH, seed=1)
    path = write_clip(folder / "clip.mp4", frames)
    (reference, mask), = moving_object(1, 80, 100, seed=2)
    return path, frames, Image.fromarray(reference), mask


def models():
    torch.manual_seed(0)
    official = build_sam2_video_predictor(TINY_CFG, device="cpu", hydra_overrides_extra=TINY_OVERRIDES)
    lift_object_scores(official)  # objects found
    ours = build_sam2_model(TINY_CFG, None, overrides=TINY_OVERRIDES)
    ours.load_state_dict(official.state_dict())
    return official, ours


def official_video(predictor, references: list[Image.Image], prompts: list[Prompt], frames: list[Image.Image],
                   folder):
    """The official predictor on the video [references, frames]: each frame's mask logits at its
    size, and the IoUs and object-score logits of its decoder call. Frames are written losslessly
    (PNG data: sam2 lists .jpg names, PIL reads by content). Boxes and points are given relative to
    their reference's own size (`normalize_coords=False`), as the engine scales them."""
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir(parents=True)
    for j, image in enumerate(references + frames):
        image.save(video / f"{j}.jpg", format="PNG")
    calls, heads = [], predictor._forward_sam_heads
    predictor._forward_sam_heads = lambda *a, **k: calls.append(heads(*a, **k)) or calls[-1]
    try:
        state = predictor.init_state(str(video))
        for j, (image, prompt) in enumerate(zip(references, prompts)):
            if prompt.mask is not None:
                predictor.add_new_mask(state, j, 1, prompt.mask)
                continue
            size = np.array([image.width, image.height], np.float32)
            points = np.array(prompt.points, np.float32).reshape(-1, 2) / size if prompt.points else None
            labels = np.array(prompt.labels, np.int32) if prompt.points else None
            box = np.array(prompt.box, np.float32) / np.tile(size, 2) if prompt.box is not None else None
            predictor.add_new_points_or_box(state, j, 1, points=points, labels=labels, box=box, normalize_coords=False)
        masks = [m[0, 0] for t, _, m in predictor.propagate_in_video(state) if t >= len(references)]
    finally:
        del predictor._forward_sam_heads
    tracked = calls[-len(frames):]  # one decoder call per tracked frame, after the prompts'
    return masks, [c[2] for c in tracked], [c[6][:, 0] for c in tracked]


def engine_video(model, references, prompts, frames, objects=1):
    """The engine: `objects` tracks of the same reference through the frames; per track, per frame,
    (mask logits, ious, object-score logit); and the engine."""
    engine = PseudoVideo(model)
    reference = engine.encode_reference([engine.prepare(image) for image in references], prompts)
    tracks = [engine.track(reference) for _ in range(objects)]
    outputs = [[] for _ in range(objects)]
    for position, image in enumerate(frames):
        for k, result in enumerate(engine.track_frame(tracks, engine.prepare(image), position, len(frames))):
            outputs[k].append((result.mask_logit(0), result.ious, result.object_score_logit))
    return outputs, engine


CASES = {
    "one shot, mask": lambda ref, mask, second: ([ref], [Prompt(mask=mask)]),
    "one shot, points": lambda ref, mask, second: ([ref], [Prompt(points=((15.0, 35.0), (90.0, 70.0)), labels=(1, 0))]),
    "two shots, mask and box with a point": lambda ref, mask, second: (
        [ref, second], [Prompt(mask=mask), Prompt(box=(10.0, 12.0, 60.0, 50.0), points=((30.0, 30.0),), labels=(1,))]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tracking_matches_the_official_predictor_frame_by_frame(clip, case, tmp_path):
    path, _, reference, mask = clip
    official, ours = models()
    second = Image.fromarray(moving_scenes(1, 60, 90, seed=4)[0])
    references, prompts = CASES[case](reference, mask, second)
    frames = [frame.image for frame in sampled_frames(path, 0)]
    _, _, logits = official_video(official, references, prompts, frames, tmp_path)
    for model in (official, ours):  # random weights: move the object-score head to find the object in some frames only
        lift_object_scores(model, -torch.cat(logits).median())
    want_masks, want_ious, want_objects = official_video(official, references, prompts, frames, tmp_path)
    (got,), engine = engine_video(ours, references, prompts, frames)
    present = [bool((m > 0).any()) for m in want_masks]
    assert any(present) and not all(present)  # found in some frames, not in others
    for want_mask, want_iou, want_object, (got_mask, got_ious, got_object) in zip(want_masks, want_ious,
                                                                                   want_objects, got):
        assert got_mask.shape == want_mask.shape == (HEIGHT, WIDTH)
        assert ((got_mask > 0) == (want_mask > 0)).float().mean() >= 0.999
        torch.testing.assert_close(got_ious, want_iou, atol=1e-4, rtol=0)
        torch.testing.assert_close(got_object, want_object, atol=1e-4, rtol=0)
    assert engine.encoder_passes == len(references) + FRAMES


def test_a_frame_is_encoded_once_for_every_object(clip):
    path, _, reference, mask = clip
    _, ours = models()
    frames = [frame.image for frame in sampled_frames(path, 0)]
    (one, two), engine = engine_video(ours, [reference], [Prompt(mask=mask)], frames, objects=2)
    assert engine.encoder_passes == 1 + FRAMES  # the reference, then each frame once for both tracks
    for a, b in zip(one, two):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_memory_stays_flat_over_a_long_clip(clip):
    """The engine keeps the window SAM2 reads, however long the clip: a track holds at most
    max(7 memories, 16 object pointers) frames' outputs after 60 frames."""
    path, _, reference, mask = clip
    _, ours = models()
    engine = PseudoVideo(ours)
    track = engine.track(engine.encode_reference([engine.prepare(reference)], [Prompt(mask=mask)]))
    frames = [engine.prepare(f.image) for f in sampled_frames(path, 0)]
    for position in range(60):
        engine.track_frame([track], frames[position % len(frames)], position, 60)
        assert len(track.recent) <= max(ours.num_maskmem, ours.max_obj_ptrs_in_encoder)
    assert sorted(track.recent) == list(range(1 + 60 - 16, 1 + 60))


def test_frames_are_sampled_at_the_rate_asked(tmp_path):
    path = write_clip(tmp_path / "ten_fps.mp4", moving_scenes(25, 32, 48, seed=3), fps=10)
    numbers = lambda fps: [frame.number for frame in sampled_frames(path, fps)]
    assert numbers(2) == [0, 5, 10, 15, 20]  # t = 0, 0.5, 1, 1.5, 2 s
    assert numbers(3) == [0, 3, 7, 10, 13, 17, 20, 23]  # the frames nearest to t = k / 3 s
    assert numbers(4)[:3] == [0, 2, 5]  # t = 0.25 s lies between frames 2 and 3: the earlier
    assert numbers(0) == list(range(25))  # every frame
    assert [frame.time for frame in sampled_frames(path, 2)] == pytest.approx([0, 0.5, 1, 1.5, 2])


def test_a_phone_clip_is_turned_upright(tmp_path):
    frames = moving_scenes(3, 32, 48, seed=3)
    path = rotate_clip(write_clip(tmp_path / "portrait.mp4", frames))
    first = next(sampled_frames(path, 0))
    assert (probe(path).height, probe(path).width) == (48, 32)
    assert np.array_equal(np.asarray(first.image), np.asarray(Image.fromarray(frames[0]).transpose(Image.ROTATE_270)))


@pytest.fixture(scope="module")
def clip_library(clip, tiny_sam2, tmp_path_factory):
    """A library of two objects (one with a mask, one with points), the lossless clip, an HEVC
    .mov of the same frames, and one photo."""
    path, frames, reference, mask = clip
    root = tmp_path_factory.mktemp("clip_library")
    (root / "references").mkdir()
    reference.save(root / "references" / "toy.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "references" / "toy.mask.png")
    reference.save(root / "references" / "toy_points.jpg", quality=95)
    (root / "references" / "toy_points.txt").write_text("15 35 1\n90 70 0\n")
    (root / "images" / "clips").mkdir(parents=True)
    shutil.copy(path, root / "images" / "clips" / "clip.mp4")
    write_clip(root / "images" / "clips" / "phone.mov", frames, codec="libx265")
    Image.fromarray(frames[0]).save(root / "images" / "photo.png")
    return root


def search(tiny_sam2, root, out, *extra):
    cfg, ckpt = tiny_sam2
    return search_photos.main(search_photos.get_args_parser().parse_args(
        ["--data_path", str(root), "--output_dir", str(out), "--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt),
         "--device", "cpu", *map(str, extra)]))


def test_search_tracks_videos_with_masks_times_and_ranges(clip_library, tiny_sam2, tmp_path):
    metrics = search(tiny_sam2, clip_library, tmp_path, "--video_fps", 0, "--visualize", 2)
    library = load_library(clip_library)
    assert library.videos == ["images/clips/clip.mp4", "images/clips/phone.mov"]
    # every photo, every frame of both clips once; the 2 reference photos for the photos, again for the videos, and
    # the points shot for its reference mask
    assert metrics["run"]["encoder_passes"] == 1 + 2 * FRAMES + 2 + 2 + 1
    found = json.loads((tmp_path / "found.json").read_text())
    with open(tmp_path / "rankings.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["image"] == "images/clips/clip.mp4"]
    assert {r["object"] for r in rows} == {"toy", "toy_points"}
    cfg, ckpt = tiny_sam2
    model = build_sam2_model(str(cfg), str(ckpt))
    frames = [frame.image for frame in sampled_frames(clip_library / "images/clips/clip.mp4", 0)]
    for name in ("toy", "toy_points"):
        shots = library.objects[name]
        references = [library.decode(s.image, 256).image for s in shots]
        (want,), _ = engine_video(model, references, [s.prompt for s in shots], frames)
        entry = next(e for e in found[name] if e["image"] == "images/clips/clip.mp4")
        present = [k for k, (m, _, logit) in enumerate(want) if logit.item() > 0]
        assert [f["frame"] for f in entry["frames"]] == present and present
        for frame in entry["frames"]:  # every found frame: its mask, its score, its time
            saved = read_mask(tmp_path / frame["mask"])
            assert np.array_equal(saved, (want[frame["frame"]][0] > 0).numpy())
            assert frame["score"] == pytest.approx(want[frame["frame"]][1].max().item(), abs=1e-5)
            assert frame["time"] == pytest.approx(frame["frame"] / 10)
            assert frame["mask"] == f"masks/{name}/clips/clip/{frame['frame']:06d}.png"
        best = max(range(FRAMES), key=lambda k: (want[k][1].max().item(), -k))
        row = next(r for r in rows if r["object"] == name)
        assert (entry["frame"], float(row["time"])) == (best, pytest.approx(best / 10))
        assert float(row["score"]) == pytest.approx(want[best][1].max().item(), abs=1e-5)
        runs = np.split(np.array(present), np.flatnonzero(np.diff(present) != 1) + 1)
        assert entry["ranges"] == [[pytest.approx(r[0] / 10), pytest.approx(r[-1] / 10)] for r in runs]
        assert (tmp_path / "masks" / name / "references" / f"{shots[0].image.split('/')[-1].split('.')[0]}.png").is_file()
    assert any(e["image"] == "images/clips/phone.mov" for e in found["toy"])  # HEVC in a .mov decodes and searches
    assert (tmp_path / "vis" / "toy.png").is_file() and (tmp_path / "vis" / "toy" / "clips" / "clip.png").is_file()


def test_video_fps_picks_the_frames_it_says(clip_library, tiny_sam2, tmp_path):
    search(tiny_sam2, clip_library, tmp_path, "--video_fps", 2)
    found = json.loads((tmp_path / "found.json").read_text())
    entry = next(e for e in found["toy"] if e["image"] == "images/clips/clip.mp4")
    assert {f["frame"] for f in entry["frames"]} <= {0, 5, 10, 15, 20}
    assert all(f["time"] == pytest.approx(f["frame"] / 10) for f in entry["frames"])
