"""Your own photos (search_photos.py): one pass ranks every photo by SAM2 and writes the masks where
the object is found, equal to the official predictor's; each photo is encoded once; the DINOv2
shortlist reads a persistent photo index that is updated for added, changed and removed photos."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

import search_photos
from utils import dinov2
from utils.images import open_image, read_mask
from utils.loaders.custom import load_library
from utils.pair_scoring import PairScheduler
from utils.photo_index import PhotoIndex
from utils.photo_search import reference_crop
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model, lift_object_scores
from utils.synthetic import render_object, render_scene, write_jpeg
from tiny_sam2 import TINY_CFG, TINY_OVERRIDES


@pytest.fixture(scope="module")
def photos(demo_photos):
    return demo_photos


@pytest.fixture(scope="module")
def half_found(tiny_sam2, photos, tmp_path_factory):
    """A checkpoint whose object-score head says "present" for about half the pairs."""
    cfg, ckpt = tiny_sam2
    model = build_sam2_model(str(cfg), str(ckpt))
    data = load_library(photos)
    pairs = [(name, image) for image in data.photos for name in data.objects]
    logits = PairScheduler(PseudoVideo(model), data.open, 4).scores(pairs, data.objects, "object").logit()
    lift_object_scores(model, -logits.median())
    path = tmp_path_factory.mktemp("half") / "half.pt"
    torch.save({"model": model.state_dict()}, path)
    return cfg, path


def search(model, data, output_dir, *extra):
    cfg, ckpt = model
    return search_photos.main(search_photos.get_args_parser().parse_args(
        ["--data_path", str(data), "--output_dir", str(output_dir), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
         str(ckpt), "--device", "cpu", "--pair_batch_size", "3", *map(str, extra)]))


def read_rankings(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def official_mask(ckpt, data, name, photo, folder):
    """The official SAM2VideoPredictor's mask of `photo` in the video [the object's shots, photo]
    (the test model: the tiny config with the checkpoint's weights; the photos have no EXIF tag)."""
    predictor = build_sam2_video_predictor(TINY_CFG, device="cpu", hydra_overrides_extra=TINY_OVERRIDES)
    predictor.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir(parents=True)
    shots = data.objects[name]
    for j, image in enumerate([f.image for f in shots] + [photo]):
        shutil.copy(data.root / image, video / f"{j}.jpg")
    state = predictor.init_state(str(video))
    for j, shot in enumerate(shots):
        if shot.prompt.mask is not None:
            predictor.add_new_mask(state, j, 1, shot.prompt.mask)
        else:
            predictor.add_new_points_or_box(state, j, 1, box=np.array(shot.prompt.box, np.float32))
    for _, _, masks in predictor.propagate_in_video(state):
        last = masks
    return (last[0, 0] > 0).numpy()


def test_the_demo_sample_is_in_the_custom_layout(photos):
    data = load_library(photos)
    assert list(data.objects) == ["object_0", "object_1"]
    for name, (first, second) in data.objects.items():  # a shot with its mask, a second one with its box
        assert (first.image, second.image) == (f"references/{name}.jpg", f"references/{name}_2.jpg")
        assert first.prompt.mask is not None and first.prompt.mask.shape == open_image(photos / first.image).size[::-1]
        assert second.prompt.box is not None
    assert data.photos == [f"images/{'outdoor' if i % 2 else 'indoor'}/{i:03d}.jpg" for i in sorted(range(6), key=lambda i: (i % 2, i))]


def test_one_pass_ranks_every_photo_and_segments_where_found(half_found, photos, tmp_path):
    out = tmp_path / "run"
    metrics = search(half_found, photos, out, "--visualize", 2, "--score", "iou_x_object", "--chunk_size", 4)
    data = load_library(photos)
    rows = read_rankings(out / "rankings.csv")
    found = json.loads((out / "found.json").read_text())
    model = build_sam2_model(str(half_found[0]), str(half_found[1]))
    present = set()
    for name in data.objects:
        ranked = [r for r in rows if r["object"] == name]
        assert [int(r["rank"]) for r in ranked] == list(range(1, 7)) and {r["image"] for r in ranked} == set(data.photos)
        pairs = [(name, r["image"]) for r in ranked]
        engine = PseudoVideo(model)
        want = PairScheduler(engine, data.open, 2).scores(pairs, data.objects, "iou_x_object")
        logits = PairScheduler(engine, data.open, 2).scores(pairs, data.objects, "object").logit()
        np.testing.assert_allclose([float(r["score"]) for r in ranked], want.numpy(), atol=1e-5)
        assert all(a >= b for a, b in zip(want, want[1:]))  # best first
        assert [r["found"] for r in ranked] == [str(int(v > 0)) for v in logits]
        present |= {pair for pair, logit in zip(pairs, logits) if logit > 0}
        assert [hit["image"] for hit in found[name]] == [r["image"] for r in ranked if r["found"] == "1"]
    assert 0 < len(present) < 12  # found in some photos, not in others
    for name, image in ((n, i) for n in data.objects for i in data.photos):  # a mask for every found photo only
        mask_file = out / "masks" / name / image.replace("images/", "").replace(".jpg", ".png")
        assert mask_file.is_file() == ((name, image) in present)
    for name, image in sorted(present)[:2]:  # what the official predictor segments in the same video
        saved = read_mask(out / "masks" / name / image.replace("images/", "").replace(".jpg", ".png"))
        want = official_mask(half_found[1], data, name, image, tmp_path)
        assert saved.shape == want.shape == open_image(photos / image).size[::-1]
        assert (saved == want).mean() > 0.999
    # every photo once, the 4 reference photos, and the 2 box shots once more for their reference masks
    assert metrics["run"]["encoder_passes"] == 6 + 4 + 2
    assert sorted(p.name for p in (out / "vis").glob("*.png")) == ["object_0.png", "object_1.png"]


def embedded_images(monkeypatch) -> list[int]:
    """Counts the images that go through DINOv2 (batch sizes of its forwards)."""
    counts, forward = [], dinov2.embed

    def counting(model, pixels, amp=False):
        counts.append(len(pixels))
        return forward(model, pixels, amp)

    monkeypatch.setattr(dinov2, "embed", counting)
    return counts


def test_shortlist_from_a_photo_index_updated_incrementally(tiny_sam2, tiny_dinov2, photos, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    flags = ["--dinov2", tiny_dinov2, "--dinov2_resolution", 56, "--shortlist", 2]
    counts = embedded_images(monkeypatch)
    first = search(tiny_sam2, folder, tmp_path / "first", *flags)
    crops = 4  # the objects' reference crops, embedded for every search
    assert sum(counts) == 6 + crops and first["run"]["index"] == {"kept": 0, "removed": 0, "added": 6}
    data = load_library(folder)
    model = dinov2.load_dinov2(str(tiny_dinov2), torch.device("cpu"))
    embed = lambda loads: dinov2.embed_images(model, loads, 56, "short_side_crop", 32)
    features = embed([lambda p=p: data.decode(p, 56).image for p in data.photos])  # as the index decodes them
    rows = read_rankings(tmp_path / "first" / "rankings.csv")
    for name, shots in data.objects.items():  # each object's shortlist: its 2 best photos by DINOv2
        loads = [lambda s=s: reference_crop(data, s.image, s.prompt, s.prompt.mask) for s in shots]
        cosine = (embed(loads) @ features.T).max(axis=0)
        want = {data.photos[i] for i in np.argsort(-cosine, kind="stable")[:2]}
        ranked = [r for r in rows if r["object"] == name]
        assert {r["image"] for r in ranked} == want
        for r in ranked:
            assert float(r["dinov2_score"]) == pytest.approx(cosine[data.photos.index(r["image"])], abs=2e-3)
    # photos outside every shortlist: no SAM2; the 4 reference photos, and the 2 box shots for their reference masks
    assert first["run"]["encoder_passes"] == len({r["image"] for r in rows}) + 4 + 2

    counts.clear()  # the same folder again: no photo goes through DINOv2
    second = search(tiny_sam2, folder, tmp_path / "second", *flags)
    assert sum(counts) == crops and second["run"]["index"] == {"kept": 6, "removed": 0, "added": 0}
    assert read_rankings(tmp_path / "second" / "rankings.csv") == rows

    rng = np.random.default_rng(9)  # two photos added, one changed, one removed
    for name in ("images/new/a.jpg", "images/new/b.jpg", "images/indoor/002.jpg"):
        write_jpeg(folder / name, render_scene(rng, render_object(77), 96, 128, scale=0.4)[0])
    (folder / "images/outdoor/005.jpg").unlink()
    counts.clear()
    third = search(tiny_sam2, folder, tmp_path / "third", *flags)
    assert sum(counts) == 3 + crops and third["run"]["index"] == {"kept": 4, "removed": 2, "added": 3}
    index = PhotoIndex(folder / ".index", {"model": str(tiny_dinov2), "resolution": 56, "preprocess": "short_side_crop",
                                           "amp": False, "full_decode": False, "video_fps": 2.0})
    paths, vectors = index.load()
    assert paths == [(p, -1) for p in load_library(folder).photos]  # every photo once, the removed one gone
    fresh = PhotoIndex(tmp_path / "fresh_index", index.settings)
    search(tiny_sam2, folder, tmp_path / "fresh", *flags, "--index_dir", tmp_path / "fresh_index")
    fresh_paths, fresh_vectors = fresh.load()
    assert fresh_paths == paths and np.array_equal(fresh_vectors, vectors)  # updated = built from scratch
    assert vectors.dtype == np.float16


def test_hidden_files_are_not_photos(tiny_sam2, photos, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "images/indoor/._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (folder / "images/.thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "images/.thumbnails/000.jpg")
    assert load_library(folder).photos == load_library(photos).photos


def test_saved_parts_are_not_reused_for_a_changed_photo(tiny_sam2, photos, tmp_path):
    """A rerun reuses the saved parts of the same search only: a photo changed since (or a
    reference's prompt) is one line asking for another --output_dir."""
    from utils.errors import UserError

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    search(tiny_sam2, folder, tmp_path / "out")
    search(tiny_sam2, folder, tmp_path / "out")  # the same search: resumed from its parts
    write_jpeg(folder / "images" / "indoor" / "000.jpg",
               render_scene(np.random.default_rng(1), render_object(5), 96, 128, scale=0.4)[0])
    with pytest.raises(UserError, match="parts of a run with other settings"):
        search(tiny_sam2, folder, tmp_path / "out")
