"""sam2_permir_obj_scores.py end to end on a generated PerMIRS folder with a shrunk random SAM2."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

import sam2_permir_obj_scores as permir
from conftest import write_permirs
from utils import dinov2
from utils.errors import UserError
from utils.io import unpack_masks
from utils.metrics import pdm_crop, pdm_crop_box, pdm_crop_fraction


@pytest.fixture(scope="module")
def permir_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("permir")
    write_permirs(root, num_videos=3, seed=4)
    write_permirs(root / "x", num_videos=1, seed=9, tiny_target_video=0)  # dropped: tiny mask
    (root / "x" / "video_0").rename(root / "video_9")
    (root / "x").rmdir()
    return root


def run_main(tiny_sam2, root, output_dir, *extra):
    cfg, ckpt = tiny_sam2
    argv = ["--dataset_file", "permir", "--data_path", str(root), "--output_dir", str(output_dir),
            "--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu",
            "--pair_batch_size", "4", *map(str, extra)]
    return permir.main(permir.get_args_parser().parse_args(argv))


def test_end_to_end(tiny_sam2, tiny_dinov2, permir_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    embedded_sizes, preprocess = set(), dinov2.preprocess
    monkeypatch.setattr(dinov2, "preprocess", lambda image, *a: embedded_sizes.add(image.size) or preprocess(image, *a))
    metrics = run_main(tiny_sam2, permir_root, out, "--dinov2", tiny_dinov2, "--visualize", 2)
    printed = capsys.readouterr().out
    data = torch.load(out / "permir_data.pt", weights_only=True)
    scores = np.load(out / "scores.npy")
    assert data["dropped_videos"] == 1 and "video_9" not in data["query_labels"]
    assert scores.shape == (3, 6) and scores.dtype == np.float32
    assert len(set(scores.ravel().tolist())) > 1

    # the printed mAP is scikit-learn's AP, recomputed from the saved files
    positives = np.array(data["query_labels"])[:, None] == np.array(data["gallery_labels"])[None]
    want_map = 100 * np.mean([average_precision_score(p, s) for p, s in zip(positives, scores)])
    assert metrics["map"] == pytest.approx(want_map, abs=1e-9)
    assert f"{want_map:.2f}" in printed
    top1 = positives[np.arange(3), scores.argmax(axis=1)]
    assert metrics["recall@1"] == pytest.approx(100 * top1.mean())
    assert metrics["recall@50"] == 100.0  # the gallery is smaller than 50
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    # every distinct image through the image encoder exactly once
    assert metrics["run"]["encoder_passes"] == 3 + 6
    assert "image encoder passes: 9 (distinct images: 9)" in printed

    # the query is each video's frame with the largest mask on PDM's crop, its mask (cut and
    # resized as its frame, PDM's input) the prompt; every frame is given as PDM's 512 x 512 crop
    assert data["frames"] == metrics["permirs_frames"] == "pdm"
    for path, label, mask, box in zip(data["query_paths"], data["query_labels"], unpack_masks(data["query_masks"]),
                                      data["query_boxes"]):
        frame_masks = [next(iter(m.values())) for m in
                       np.load(permir_root / label / "masks.npz.npy", allow_pickle=True)]
        best = int(np.argmax([pdm_crop_fraction(m) for m in frame_masks]))
        assert path.endswith(f"{label}/{best}.jpg") and tuple(box) == pdm_crop_box(frame_masks[best])
        assert mask.shape == (512, 512) and np.array_equal(mask, pdm_crop(frame_masks[best], tuple(box)))
    for path, box in zip(data["gallery_paths"], data["gallery_boxes"]):
        label, frame = Path(path).parent.name, int(Path(path).stem)
        frame_mask = next(iter(np.load(permir_root / label / "masks.npz.npy", allow_pickle=True)[frame].values()))
        assert tuple(box) == pdm_crop_box(frame_mask)  # each frame cut by its own mask
    assert embedded_sizes == {(512, 512)}  # the DINOv2 baseline sees the crops too

    baseline = np.load(out / "dinov2_scores.npy")
    assert baseline.shape == (3, 6) and "DINOv2 CLS" in printed
    assert metrics["dinov2"]["map"] == pytest.approx(
        100 * np.mean([average_precision_score(p, s) for p, s in zip(positives, baseline)]))
    assert len(list((out / "vis").glob("query_*.png"))) == 2


def test_whole_frames_on_request(tiny_sam2, permir_root, tmp_path):
    """--permirs_frames full: the queries' masks and the frames as they are (the same split)."""
    metrics = run_main(tiny_sam2, permir_root, tmp_path / "full", "--permirs_frames", "full")
    data = torch.load(tmp_path / "full" / "permir_data.pt", weights_only=True)
    assert metrics["permirs_frames"] == data["frames"] == "full"
    assert all(box is None for box in data["query_boxes"] + data["gallery_boxes"])
    for path, mask in zip(data["query_paths"], unpack_masks(data["query_masks"])):
        masks = np.load(Path(path).parent / "masks.npz.npy", allow_pickle=True)
        assert np.array_equal(mask, next(iter(masks[int(Path(path).stem)].values())))
    with pytest.raises(UserError, match="--permirs_frames full"):  # a cache of the other inputs is refused
        run_main(tiny_sam2, permir_root, tmp_path / "full", "--stage", "retrieve")


def test_cache_then_retrieve_equals_all(tiny_sam2, permir_root, tmp_path):
    run_main(tiny_sam2, permir_root, tmp_path / "all", "--score", "object")
    split = run_main(tiny_sam2, permir_root, tmp_path / "split", "--stage", "cache")
    assert split["queries"] == 3 and split["gallery_images"] == 6
    retrieved = run_main(tiny_sam2, permir_root, tmp_path / "split", "--stage", "retrieve", "--score", "object")
    assert np.array_equal(np.load(tmp_path / "all" / "scores.npy"), np.load(tmp_path / "split" / "scores.npy"))
    assert retrieved["score"] == "object"


def test_score_kinds(tiny_sam2, permir_root, tmp_path):
    """`iou_x_object` is the product of the `iou` and `object` scores of the same pairs."""
    scores = {}
    for kind in ("iou", "object", "iou_x_object"):
        assert run_main(tiny_sam2, permir_root, tmp_path / kind, "--score", kind)["score"] == kind
        scores[kind] = np.load(tmp_path / kind / "scores.npy")
    assert 0 < scores["object"].min() and scores["object"].max() < 1  # a sigmoid
    np.testing.assert_allclose(scores["iou_x_object"], scores["iou"] * scores["object"], rtol=1e-6)


def test_query_is_chosen_on_pdm_crop_not_on_the_frame(tmp_path):
    """A 16:9 video whose frames hold 0.30%, 0.45% and 0.40% of the frame: PDM measures them on
    its square crop (0.54%, 0.80%, 0.71%): the video is kept, and frame 1 is the query."""
    from utils.loaders.permirs import load_permirs_videos, permir_split
    from utils.synthetic import write_jpeg

    video = tmp_path / "data" / "wide"
    masks = []
    for f, pixels in enumerate((2800, 4200, 3700)):
        mask = np.zeros((720, 1280), bool)
        mask[300:300 + pixels // 100, 500:600] = True
        masks.append({3: mask})
        write_jpeg(video / f"{f}.jpg", Image.new("RGB", (1280, 720), (90, 90, 90)))
    np.save(video / "masks.npz.npy", np.array(masks, dtype=object), allow_pickle=True)
    split, dropped = permir_split(load_permirs_videos(tmp_path / "data"))
    assert dropped == 0 and [q.image_path for q in split.queries] == [video / "1.jpg"]
    assert [g.image_path for g in split.gallery] == [video / "0.jpg", video / "2.jpg"]
