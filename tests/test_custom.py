"""Your own photos (the `custom` layout): segmentation and retrieval without ground truth, every
photo encoded once however many objects are searched, reruns reusing finished work."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import make_demo_data
import sam2_permir_obj_scores
import sam2_permis
from utils.loaders.common import open_image
from utils.loaders.custom import load_custom
from utils.pair_scoring import PairScheduler
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_photos")
    make_demo_data.main(make_demo_data.get_args_parser().parse_args(
        ["--output_dir", str(root), "--objects", "2", "--images", "6", "--seed", "3"]))
    return root


@pytest.fixture(scope="module")
def half_found(tiny_sam2, photos, tmp_path_factory):
    """A checkpoint whose object-score head says "present" for about half the pairs."""
    cfg, ckpt = tiny_sam2
    model = build_sam2_model(str(cfg), str(ckpt))
    data = load_custom(photos)
    pairs = [(name, image) for image in data.images for name in data.objects]
    logits = PairScheduler(PseudoVideo(model), data.open, 4).scores(pairs, data.objects, "object").logit()
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data -= logits.median()
    path = tmp_path_factory.mktemp("half") / "half.pt"
    torch.save({"model": model.state_dict()}, path)
    return cfg, path


def args_for(model, data, output_dir, *extra):
    cfg, ckpt = model
    return ["--dataset_file", "custom", "--data_path", str(data), "--output_dir", str(output_dir), "--sam2_cfg",
            str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--pair_batch_size", "3", *map(str, extra)]


def segment(*argv):
    return sam2_permis.main(sam2_permis.get_args_parser().parse_args(args_for(*argv)))


def retrieve(*argv):
    return sam2_permir_obj_scores.main(sam2_permir_obj_scores.get_args_parser().parse_args(args_for(*argv)))


def test_the_demo_sample_is_in_the_custom_layout(photos):
    data = load_custom(photos)
    assert list(data.objects) == ["object_0", "object_1"]
    for name, (first, second) in data.objects.items():  # a shot with its mask, a second one with its box
        assert (first.image, second.image) == (f"references/{name}.jpg", f"references/{name}_2.jpg")
        assert first.prompt.mask is not None and first.prompt.mask.shape == open_image(photos / first.image).size[::-1]
        assert second.prompt.box is not None
    assert data.images == [f"images/{'outdoor' if i % 2 else 'indoor'}/{i:03d}.jpg" for i in sorted(range(6), key=lambda i: (i % 2, i))]


def test_segmentation_finds_and_segments(half_found, photos, tmp_path):
    out = tmp_path / "run"
    metrics = segment(half_found, photos, out, "--save_masks", "--visualize", 1, "--chunk_size", 4)
    found = json.loads((out / "found.json").read_text())
    data = load_custom(photos)
    saved = {}
    for chunk in sorted((out / "parts").glob("chunk_*.npz")):
        with np.load(chunk) as part:
            saved[chunk.name] = part["object_score_logit"]
    logits = np.concatenate(list(saved.values()))
    pairs = [(name, image) for image in data.images for name in data.objects]
    present = {pair for pair, logit in zip(pairs, logits) if logit > 0}
    assert 0 < len(present) < len(pairs)  # the object is found in some photos, not in others
    assert {(name, hit["image"]) for name, hits in found.items() for hit in hits} == present
    for name, image in pairs:  # a mask for every found photo, at the photo's size, and only those
        mask_file = out / "masks" / name / image.replace("images/", "").replace(".jpg", ".png")
        assert mask_file.is_file() == ((name, image) in present)
        if mask_file.is_file():
            assert Image.open(mask_file).size == Image.open(photos / image).size
    for name in data.objects:  # --visualize 1: the first photo where it is found
        shown = sorted(p.relative_to(out / "vis" / name) for p in (out / "vis" / name).rglob("*.png")) \
            if (out / "vis" / name).exists() else []
        first = next((image for image in data.images if (name, image) in present), None)
        assert [str(s) for s in shown] == ([first.replace("images/", "").replace(".jpg", ".png")] if first else [])
    assert metrics["objects"]["object_0"] == {"references": 2, "found": len(found["object_0"])}
    assert metrics["encoder_passes"] == len(data.images) + 4  # every photo once, and the 4 reference photos


def test_segmentation_resumes_from_finished_parts(half_found, photos, tmp_path):
    full = tmp_path / "full"
    segment(half_found, photos, full, "--save_masks", "--chunk_size", 2)
    resumed = tmp_path / "resumed"
    (resumed / "parts").mkdir(parents=True)
    for name in ("settings.json", "chunk_00000.npz"):  # a run killed after its first part
        (resumed / "parts" / name).write_bytes((full / "parts" / name).read_bytes())
    for mask in (full / "masks").rglob("*.png"):
        if mask.stem in ("000", "002"):  # the first part's photos, sorted: indoor/000, indoor/002
            target = resumed / mask.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(mask.read_bytes())
    again = segment(half_found, photos, resumed, "--save_masks", "--chunk_size", 2)
    assert (resumed / "found.json").read_text() == (full / "found.json").read_text()
    assert sorted(p.relative_to(resumed) for p in (resumed / "masks").rglob("*.png")) == \
        sorted(p.relative_to(full) for p in (full / "masks").rglob("*.png"))
    assert again["encoder_passes"] == 4 + 4  # the 4 photos left, and the 4 reference photos


def read_rankings(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_retrieval_ranks_every_photo_by_the_sam2_score(tiny_sam2, photos, tmp_path):
    out = tmp_path / "run"
    metrics = retrieve(tiny_sam2, photos, out, "--visualize", 1, "--score", "iou")
    rows = read_rankings(out / "rankings.csv")
    data = load_custom(photos)
    assert [r["object"] for r in rows] == [name for name in data.objects for _ in data.images]
    model = build_sam2_model(str(tiny_sam2[0]), str(tiny_sam2[1]))
    for name in data.objects:
        ranked = [r for r in rows if r["object"] == name]
        assert [int(r["rank"]) for r in ranked] == list(range(1, 7)) and {r["image"] for r in ranked} == set(data.images)
        scores = PairScheduler(PseudoVideo(model), data.open, 2).scores([(name, r["image"]) for r in ranked],
                                                                        data.objects, "iou")
        np.testing.assert_allclose([float(r["sam2_score"]) for r in ranked], scores.numpy(), atol=1e-5)
        assert all(a >= b for a, b in zip(scores, scores[1:])) and all(r["dinov2_score"] == "" for r in ranked)
    assert metrics["encoder_passes"] == 6 + 4
    assert [p.name for p in (out / "vis").glob("*.png")] == ["object_0.png"]


def test_retrieval_with_a_dinov2_shortlist(tiny_sam2, tiny_dinov2, photos, tmp_path):
    out = tmp_path / "run"
    metrics = retrieve(tiny_sam2, photos, out, "--dinov2", tiny_dinov2, "--dinov2_resolution", 56, "--shortlist", 2)
    rows = read_rankings(out / "rankings.csv")
    for name in ("object_0", "object_1"):
        ranked = [r for r in rows if r["object"] == name]
        scored, rest = ranked[:2], ranked[2:]
        assert all(r["sam2_score"] for r in scored) and not any(r["sam2_score"] for r in rest)
        by_dinov2 = sorted(ranked, key=lambda r: -float(r["dinov2_score"]))
        assert {r["image"] for r in scored} == {r["image"] for r in by_dinov2[:2]}  # the shortlist
        assert [float(r["dinov2_score"]) for r in rest] == sorted((float(r["dinov2_score"]) for r in rest), reverse=True)
    shortlisted = {r["image"] for r in rows if r["sam2_score"]}
    assert metrics["encoder_passes"] == len(shortlisted) + 4  # photos outside every shortlist: never through SAM2
    # a rerun reuses the DINOv2 features and the SAM2 parts: nothing is encoded again
    again = retrieve(tiny_sam2, photos, out, "--dinov2", tiny_dinov2, "--dinov2_resolution", 56, "--shortlist", 2)
    assert again["encoder_passes"] == 0
    assert read_rankings(out / "rankings.csv") == rows
