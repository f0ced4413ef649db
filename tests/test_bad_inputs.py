"""Every script, every bad input named in the issues: one line `error: <what> (<where>): <fix>`
on stderr, exit status 2, no traceback, and no metrics.json a later step could mistake for a
result. Valid-but-unusual inputs (0/1 masks, grey or CMYK images) are accepted."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import extract_candidates
import extract_images
import make_demo_data
import precompute_features_ilias
import sam2_permir_obj_scores
import sam2_permis
import sam2_reranking
import topk_candidates_ilias
import train_revisitop
from conftest import write_permirs
from ilias_data import source_args
from train_data import write_revisitop, write_uned
from utils.errors import run_cli
from utils.synthetic import write_perseg, write_webdataset_tar


def sam2_args(tiny_sam2):
    cfg, ckpt = tiny_sam2
    return ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu"]


def perseg(tmp, change=None):
    root = tmp / "perseg"
    write_perseg(root, num_objects=2, images_per_object=4, seed=1, size=(48, 64))
    if change:
        change(root)
    return root


def set_png(path, values):
    size = Image.open(path).size
    pixels = np.zeros(size[::-1], np.uint8)
    pixels[: size[1] // 2] = values[1]
    pixels[: size[1] // 4] = values[-1]
    Image.fromarray(pixels).save(path)


def permis_case(tiny_sam2, tmp, extra=(), change=None, dataset="perseg", root=None):
    root = root or perseg(tmp, change)
    return sam2_permis, ["--dataset_file", dataset, "--data_path", str(root), "--output_dir", str(tmp / "out"),
                         *sam2_args(tiny_sam2), *extra]


def permirs(tmp, change):
    root = write_permirs(tmp / "permirs", num_videos=3)
    change(root / "video_1")
    return root


def ilias_case(module, ctx, tmp, *argv):
    root, info = ctx["ilias"]
    return module, [*source_args(root, info), *map(str, argv)]


def rerank_case(ctx, tmp, *extra, stage1=None):
    stage1 = stage1 or ctx["stage1"]
    return sam2_reranking, ["--topk_dir", str(stage1), "--features_dir", str(ctx["features"]),
                            "--images_dir", str(stage1 / "images"), "--output_dir", str(tmp / "out"),
                            "--rerank_depth", "5", *sam2_args(ctx["tiny_sam2"]), *map(str, extra)]


def train_case(ctx, tmp, dataset, root, *extra):
    return train_revisitop, ["--dataset_file", dataset, "--data_path", str(root), "--output_dir", str(tmp / "out"),
                             "--epochs", "1", "--samples_per_epoch", "2", "--triplets_per_step", "2", "--val_fraction", "0.4",
                             *sam2_args(ctx["tiny_sam2"]), *map(str, extra)]


def copy_stage1(ctx, tmp):
    copy = tmp / "stage1"
    shutil.copytree(ctx["stage1"], copy)
    return copy


def truncate(path):
    path.write_bytes(path.read_bytes()[:150])


CASES = {
    # sam2_permis.py (PerSeg)
    "permis: missing data folder": lambda c, t: (*permis_case(c["tiny_sam2"], t, root=t / "nowhere"), "nowhere"),
    "permis: no reference image": lambda c, t: (*permis_case(c["tiny_sam2"], t, change=lambda r: (r / "Images/object_0/00.jpg").unlink()), "00"),
    "permis: mask of another size": lambda c, t: (*permis_case(c["tiny_sam2"], t, change=lambda r: Image.new("L", (5, 5)).save(r / "Annotations/object_0/02.png")), "02.png"),
    "permis: empty reference mask": lambda c, t: (*permis_case(c["tiny_sam2"], t, change=lambda r: set_png(r / "Annotations/object_1/00.png", [0, 0])), "00.png"),
    "permis: truncated jpeg": lambda c, t: (*permis_case(c["tiny_sam2"], t, change=lambda r: truncate(r / "Images/object_1/03.jpg")), "03.jpg"),
    "permis: empty dataset": lambda c, t: (*permis_case(c["tiny_sam2"], t, change=lambda r: [shutil.rmtree(p) for p in (r / "Images").iterdir()]), "Images"),
    "permis: unknown dataset": lambda c, t: (*permis_case(c["tiny_sam2"], t, dataset="coco"), "--dataset_file"),
    "permis: missing checkpoint": lambda c, t: (*permis_case(c["tiny_sam2"], t, extra=["--sam2_checkpoint", str(t / "sam2.1_hiera_tiny.pt")]), "download_ckpts.sh"),
    "permis: yaml not a SAM2 config": lambda c, t: (*permis_case(c["tiny_sam2"], t, extra=["--sam2_cfg", str(c["other_yaml"])]), "--sam2_cfg"),
    "permis: shots too large": lambda c, t: (*permis_case(c["tiny_sam2"], t, extra=["--shots", "4"]), "--shots"),
    "permis: output folder not writable": lambda c, t: (*permis_case(c["tiny_sam2"], t, extra=["--output_dir", str(c["a_file"] / "out")]), "--output_dir"),
    "permis: video without a frame": lambda c, t: (*permis_case(c["tiny_sam2"], t, dataset="permis", root=permirs(t, lambda v: (v / "1.jpg").unlink())), "1.jpg"),
    "permis: video without masks": lambda c, t: (*permis_case(c["tiny_sam2"], t, dataset="permis", root=permirs(t, lambda v: (v / "masks.npz.npy").unlink())), "masks.npz.npy"),
    "permis: masks of another structure": lambda c, t: (*permis_case(c["tiny_sam2"], t, dataset="permis", root=permirs(t, lambda v: np.save(v / "masks.npz.npy", np.arange(3)))), "masks.npz.npy"),
    "permis: masks of another size": lambda c, t: (*permis_case(c["tiny_sam2"], t, dataset="permis", root=permirs(t, lambda v: np.save(v / "masks.npz.npy", np.array([{1: np.ones((4, 4), bool)}] * 3, dtype=object), allow_pickle=True))), "masks.npz.npy"),
    # sam2_permir_obj_scores.py
    "permir: unknown score": lambda c, t: (sam2_permir_obj_scores, ["--dataset_file", "permir", "--score", "area"], "--score"),
    "permir: foreign cache": lambda c, t: (sam2_permir_obj_scores, ["--dataset_file", "permir", "--data_path", str(c["permirs"]), "--output_dir", str(c["foreign_cache_dir"]), "--stage", "retrieve", *sam2_args(c["tiny_sam2"])], "--rebuild_cache"),
    "permir: bad masks file": lambda c, t: (sam2_permir_obj_scores, ["--dataset_file", "permir", "--data_path", str(permirs(t, lambda v: np.save(v / "masks.npz.npy", np.arange(3)))), "--output_dir", str(t / "out"), *sam2_args(c["tiny_sam2"])], "video_1"),
    # ILIAS first stage
    "features: missing shard": lambda c, t: (*ilias_case(precompute_features_ilias, c, t, "--split", "db", "--db_shards", "gone-000000.tar", "--dinov2", c["tiny_dinov2"], "--output_dir", t / "out"), "gone-000000.tar"),
    "features: corrupt image": lambda c, t: (*ilias_case(precompute_features_ilias, c, t, "--split", "distractors", "--distractors_shards", c["corrupt_shard"].name, "--data_path", c["corrupt_shard"].parent, "--dinov2", c["tiny_dinov2"], "--dinov2_resolution", 56, "--output_dir", t / "out"), "--skip_corrupt"),
    "features: manifests of another resolution": lambda c, t: (*ilias_case(precompute_features_ilias, c, t, "--split", "queries", "--dinov2", c["tiny_dinov2"], "--dinov2_resolution", 112, "--output_dir", c["features"]), "resolution"),
    "features: missing model": lambda c, t: (*ilias_case(precompute_features_ilias, c, t, "--dinov2", t / "no_model", "--output_dir", t / "out"), "--dinov2"),
    "topk: k larger than the database": lambda c, t: (topk_candidates_ilias, ["--features_dir", str(c["features"]), "--output_dir", str(t / "out"), "--topk", "1000"], "--topk"),
    "topk: no features": lambda c, t: (topk_candidates_ilias, ["--features_dir", str(t / "none"), "--output_dir", str(t / "out")], "manifest.json"),
    "images: missing shard": lambda c, t: (*ilias_case(extract_images, c, t, "--queries_shards", "gone-000000.tar", "--images_dir", t / "images", "--output_dir", t / "out"), "gone-000000.tar"),
    "candidates: k larger than the top-K": lambda c, t: (*ilias_case(extract_candidates, c, t, "--rerank_depth", 99, "--topk_dir", c["stage1"], "--features_dir", c["features"], "--images_dir", t / "images", "--output_dir", t / "out"), "--rerank_depth"),
    "candidates: top-K of another run": lambda c, t: (*ilias_case(extract_candidates, c, t, "--topk_dir", c["mismatched_stage1"], "--features_dir", c["features"], "--images_dir", t / "images", "--output_dir", t / "out"), "topk_candidates_ilias.py"),
    # sam2_reranking.py
    "rerank: missing candidate images": lambda c, t: (*rerank_case(c, t, "--rerank_depth", 21), "extract_candidates.py"),
    "rerank: top-K of another run": lambda c, t: (*rerank_case(c, t, stage1=c["mismatched_stage1"]), "topk_candidates_ilias.py"),
    "rerank: k larger than the top-K": lambda c, t: (*rerank_case(c, t, "--rerank_depth", 22), "--rerank_depth"),
    "rerank: head of another SAM2 size": lambda c, t: (*rerank_case(c, t, "--head_checkpoint", c["foreign_head"]), "--head_checkpoint"),
    # train_revisitop.py
    "train: missing gnd": lambda c, t: (*train_case(c, t, "rparis6k", c["revisitop"]), "rparis6k"),
    "train: gnd without keys": lambda c, t: (*train_case(c, t, "roxford5k", c["broken_revisitop"]), "gnd_roxford5k.pkl"),
    "train: UnED image missing": lambda c, t: (*train_case(c, t, "uned", c["broken_uned"], "--uned_domains", "cars"), "train.json"),
    "train: resume another head": lambda c, t: (*train_case(c, t, "roxford5k", c["revisitop"], "--resume", "--output_dir", c["trained"], "--score", "object"), "last.pt"),
    # make_demo_data.py
    "demo data: no objects": lambda c, t: (make_demo_data, ["--objects", "0", "--output_dir", str(t / "demo")], "--objects"),
}


@pytest.fixture(scope="module")
def ctx(tiny_sam2, tiny_dinov2, ilias, features, tmp_path_factory):
    import pickle

    import topk_candidates_ilias as topk

    tmp = tmp_path_factory.mktemp("bad_inputs")
    root, info = ilias
    stage1 = tmp / "stage1"
    topk.main(topk.get_args_parser().parse_args(["--features_dir", str(features), "--output_dir", str(stage1), "--topk", "21"]))
    extract_images.main(extract_images.get_args_parser().parse_args([*source_args(root, info), "--images_dir", str(stage1 / "images"), "--output_dir", str(tmp / "ei")]))
    extract_candidates.main(extract_candidates.get_args_parser().parse_args(
        [*source_args(root, info), "--rerank_depth", "5", "--topk_dir", str(stage1), "--features_dir", str(features), "--images_dir", str(stage1 / "images"), "--output_dir", str(tmp / "ec")]))
    mismatched = tmp / "mismatched"
    shutil.copytree(stage1, mismatched)
    np.save(mismatched / "topk_indices.npy", np.load(stage1 / "topk_indices.npy")[:3])
    np.save(mismatched / "topk_scores.npy", np.load(stage1 / "topk_scores.npy")[:3])
    meta = json.loads((mismatched / "topk_meta.json").read_text())
    (mismatched / "topk_meta.json").write_text(json.dumps({**meta, "queries": 3}))
    other_yaml = tmp / "train.yaml"
    other_yaml.write_text("trainer:\n  epochs: 3\n")
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    foreign_cache_dir = tmp / "foreign_cache"
    foreign_cache_dir.mkdir()
    torch.save({"scores": torch.zeros(2)}, foreign_cache_dir / "permir_data.pt")
    corrupt_shard = tmp / "corrupt" / "bad-000000.tar"
    write_webdataset_tar(corrupt_shard, [("000009/000000", b"\xff\xd8 truncated", None)])
    foreign_head = tmp / "head.pt"
    torch.save({"head": {}, "architecture": "0123456789abcdef", "sam2_cfg": "sam2.1_hiera_l.yaml"}, foreign_head)
    revisitop = write_revisitop(tmp / "revisitop")
    broken_revisitop = write_revisitop(tmp / "broken_revisitop")
    with open(broken_revisitop / "roxford5k" / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": []}, f)
    broken_uned = write_uned(tmp / "uned", domains=("cars",))
    entry = json.loads((broken_uned / "info_files" / "cars" / "train.json").read_text())[0]
    (broken_uned / "images" / entry["path"]).unlink()
    trained = tmp / "trained"
    train_revisitop.main(train_revisitop.get_args_parser().parse_args(
        ["--dataset_file", "roxford5k", "--data_path", str(revisitop), "--output_dir", str(trained), "--epochs", "1",
         "--samples_per_epoch", "2", "--triplets_per_step", "2", "--val_fraction", "0.4", *sam2_args(tiny_sam2)]))
    return {"tiny_sam2": tiny_sam2, "tiny_dinov2": tiny_dinov2, "ilias": ilias, "features": features,
            "stage1": stage1, "mismatched_stage1": mismatched, "other_yaml": other_yaml, "a_file": a_file,
            "permirs": write_permirs(tmp / "permirs", num_videos=2), "foreign_cache_dir": foreign_cache_dir,
            "corrupt_shard": corrupt_shard, "foreign_head": foreign_head, "revisitop": revisitop,
            "broken_revisitop": broken_revisitop, "broken_uned": broken_uned, "trained": trained}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(case, ctx, tmp_path, monkeypatch, capsys):
    module, argv, named = CASES[case](ctx, tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.get_args_parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_unusual_but_valid_inputs_are_accepted(tiny_sam2, tmp_path):
    """0/1 masks are read like 0/255 ones (> 0), grey and CMYK images are converted to RGB."""
    def to_zero_one(root):
        for path in (root / "Annotations").rglob("*.png"):
            Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8)).save(path)

    results = []
    for name, change in (("plain", None), ("zero_one", to_zero_one)):
        case_dir = tmp_path / name
        case_dir.mkdir()
        module, argv = permis_case(tiny_sam2, case_dir, change=change)
        results.append(module.main(module.get_args_parser().parse_args(argv)))
    assert results[0]["per_object"] == results[1]["per_object"]
    modes = tmp_path / "modes"
    modes.mkdir()

    def grey_and_cmyk(root):
        Image.open(root / "Images/object_0/01.jpg").convert("L").save(root / "Images/object_0/01.jpg")
        Image.open(root / "Images/object_1/02.jpg").convert("CMYK").save(root / "Images/object_1/02.jpg")

    module, argv = permis_case(tiny_sam2, modes, change=grey_and_cmyk)
    metrics = module.main(module.get_args_parser().parse_args(argv))
    assert all(m["targets"] == 3 for m in metrics["per_object"].values())
