"""sam2_permir_obj_scores.py end to end on a generated PerMIRS folder with a shrunk random SAM2."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import sam2_permir_obj_scores as permir
from conftest import run_script, write_permirs
from utils.errors import UserError
from utils.io import unpack_masks


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
            "--batch_size", "4", *map(str, extra)]
    return permir.main(permir.get_args_parser().parse_args(argv))


def test_end_to_end(tiny_sam2, tiny_dinov2, permir_root, tmp_path, capsys):
    out = tmp_path / "run"
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
    assert json.loads((out / "metrics.json").read_text())["map"] == metrics["map"]

    # every distinct image through the image encoder exactly once
    assert metrics["encoder_passes"] == 3 + 6
    assert "image encoder passes: 9 (distinct images: 9)" in printed

    # the query is each video's frame with the largest mask, its mask the prompt
    for path, label, mask in zip(data["query_paths"], data["query_labels"], unpack_masks(data["query_masks"])):
        frame_masks = [next(iter(m.values())) for m in
                       np.load(permir_root / label / "masks.npz.npy", allow_pickle=True)]
        best = int(np.argmax([m.sum() for m in frame_masks]))
        assert path.endswith(f"{label}/{best}.jpg") and np.array_equal(mask, frame_masks[best])

    baseline = np.load(out / "dinov2_scores.npy")
    assert baseline.shape == (3, 6) and "DINOv2 CLS" in printed
    assert metrics["dinov2"]["map"] == pytest.approx(
        100 * np.mean([average_precision_score(p, s) for p, s in zip(positives, baseline)]))
    assert len(list((out / "vis").glob("query_*.png"))) == 2


def test_cache_then_retrieve_equals_all(tiny_sam2, permir_root, tmp_path):
    run_main(tiny_sam2, permir_root, tmp_path / "all", "--score", "object")
    split = run_main(tiny_sam2, permir_root, tmp_path / "split", "--stage", "cache")
    assert split["queries"] == 3 and split["gallery images"] == 6
    retrieved = run_main(tiny_sam2, permir_root, tmp_path / "split", "--stage", "retrieve", "--score", "object")
    assert np.array_equal(np.load(tmp_path / "all" / "scores.npy"), np.load(tmp_path / "split" / "scores.npy"))
    assert retrieved["score"] == "object"


def test_scores_differ_by_kind(tiny_sam2, permir_root, tmp_path):
    iou = run_main(tiny_sam2, permir_root, tmp_path / "iou")
    product = run_main(tiny_sam2, permir_root, tmp_path / "product", "--score", "iou_x_object")
    assert iou["score"] == "iou" and product["score"] == "iou_x_object"
    assert not np.array_equal(np.load(tmp_path / "iou" / "scores.npy"),
                              np.load(tmp_path / "product" / "scores.npy"))


def test_bad_cache_files(tiny_sam2, permir_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"queries": torch.zeros(2)}, out / "permir_data.pt")
    with pytest.raises(UserError, match="another version or tool") as foreign:
        run_main(tiny_sam2, permir_root, out, "--stage", "retrieve")
    assert "--rebuild_cache" in foreign.value.fix
    run_main(tiny_sam2, permir_root, out, "--stage", "cache")
    other = write_permirs(tmp_path / "other", num_videos=2)
    with pytest.raises(UserError, match="built from"):
        run_main(tiny_sam2, other, out, "--stage", "retrieve")
    with pytest.raises(UserError, match="no PerMIR cache"):
        run_main(tiny_sam2, permir_root, tmp_path / "empty", "--stage", "retrieve")


def test_cli_one_line_errors(tiny_sam2, permir_root, tmp_path):
    cfg, ckpt = tiny_sam2
    result = run_script("sam2_permir_obj_scores.py", "--dataset_file", "permir", "--score", "area",
                        "--data_path", permir_root)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--score" in result.stderr
    bad = write_permirs(tmp_path / "bad", num_videos=2)
    np.save(bad / "video_1" / "masks.npz.npy", np.array([{1: np.zeros((3, 3), bool)}] * 2, dtype=object),
            allow_pickle=True)
    result = run_script("sam2_permir_obj_scores.py", "--dataset_file", "permir", "--data_path", bad,
                        "--output_dir", tmp_path / "o", "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "video_1" in result.stderr
