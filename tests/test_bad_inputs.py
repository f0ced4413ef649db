"""Every script's bad inputs, in one table: one line `error: <what> (<where>): <fix>` on stderr naming
the file or flag, exit status 2, no traceback, and no metrics.json a later step could mistake for
a result. (Real photos that are valid but unusual: test_real_photos.py.)"""
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
import search_photos
import topk_candidates_ilias
import train_revisitop
from conftest import write_permirs
from ilias_data import source_args
from train_data import write_revisitop, write_uned
from utils.cli import run_cli
from utils.synthetic import write_custom, write_perseg, write_webdataset_tar


def sam2_args(ctx):
    cfg, ckpt = ctx["tiny_sam2"]
    return ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu"]


def changed(write, change):
    """A fresh dataset folder from `write(folder)`, then `change(folder)`; returns the folder."""
    def make(tmp):
        root = tmp / "data"
        write(root)
        if change:
            change(root)
        return root
    return make


perseg = lambda change=None: changed(lambda r: write_perseg(r, num_objects=2, images_per_object=4, seed=1,
                                                            size=(48, 64)), change)
permirs = lambda change: changed(lambda r: write_permirs(r, num_videos=3), lambda r: change(r / "video_1"))
custom = lambda change: changed(lambda r: write_custom(r, num_objects=2, num_images=3, size=(48, 64)), change)


def segmentation(dataset, make, *extra):
    return lambda c, t: (sam2_permis, ["--dataset_file", dataset, "--data_path", str(make(t)), "--output_dir",
                                       str(t / "out"), *sam2_args(c), *map(str, extra)])


def photos(make, *extra):
    return lambda c, t: (search_photos, ["--data_path", str(make(t)), "--output_dir", str(t / "out"), *sam2_args(c),
                                         *map(str, extra)])


def retrieval(dataset, make, *extra):
    return lambda c, t: (sam2_permir_obj_scores, ["--dataset_file", dataset, "--data_path", str(make(t)),
                                                  "--output_dir", str(t / "out"), *sam2_args(c), *map(str, extra)])


def ilias(module, *extra):
    def case(c, t):
        root, info = c["ilias"]
        values = [str(v(c, t)) if callable(v) else str(v) for v in extra]
        return module, [*source_args(root, info), *values]
    return case


def features(*extra):
    return ilias(precompute_features_ilias, "--dinov2", lambda c, t: c["tiny_dinov2"], "--dinov2_resolution", 56,
                 "--output_dir", lambda c, t: t / "out", "--num_workers", 0, *extra)


def broken_shard(name, samples):
    """A data folder holding one distractor shard `name` with these (key, bytes, boxes) samples."""
    def make(c, t):
        write_webdataset_tar(t / "shards" / name, samples) if samples is not None else None
        return t / "shards"
    return make


def write_bytes(path, data):
    path.write_bytes(data)


def truncate(path):
    path.write_bytes(path.read_bytes()[:150])


def set_png(path, value):
    Image.new("L", Image.open(path).size, value).save(path)


def copy(c, t, name):
    shutil.copytree(c[name], t / name)
    return t / name


def rerank(stage1, *extra):
    return lambda c, t: (sam2_reranking, ["--topk_dir", str(stage1(c, t)), "--features_dir", str(c["features"]),
                                          "--images_dir", str(stage1(c, t) / "images"), "--output_dir", str(t / "out"),
                                          "--rerank_depth", "5", *sam2_args(c), *map(str, extra)])


def stage1_with(change):
    def make(c, t):
        folder = t / "stage1"
        if not folder.exists():
            shutil.copytree(c["stage1"], folder)
            change(folder)
        return folder
    return make


def train(dataset, root, *extra):
    return lambda c, t: (train_revisitop, ["--dataset_file", dataset, "--data_path", str(root(c, t)), "--output_dir",
                                           str(t / "out"), "--epochs", "1", "--samples_per_epoch", "2",
                                           "--triplets_per_step", "2", "--val_fraction", "0.4", *sam2_args(c),
                                           *map(str, extra)])


def uned_info(change):
    def make(c, t):
        root = write_uned(t / "uned", domains=("cars",))
        change(root)
        return root
    return make


def info_file(root):
    return root / "info_files" / "cars" / "train.json"


def other_dim_features(c, t):
    folder = copy(c, t, "features")
    first = json.loads((folder / "db" / "manifest.json").read_text())["shards"][0]["file"]
    np.save(folder / "db" / first, np.zeros((20, 7), np.float32))
    return folder


CASES = {  # case -> (make the script and its argv from the shared context and a tmp folder, text the error names)
    # sam2_permis.py: PerSeg, PerMIS
    "permis: missing data folder": (segmentation("perseg", lambda t: t / "nowhere"), "nowhere"),
    "permis: no reference image": (segmentation("perseg", perseg(lambda r: (r / "Images/object_0/00.jpg").unlink())), "00"),
    "permis: mask of another size": (segmentation("perseg", perseg(lambda r: Image.new("L", (5, 5)).save(r / "Annotations/object_0/02.png"))), "02.png"),
    "permis: empty reference mask": (segmentation("perseg", perseg(lambda r: set_png(r / "Annotations/object_1/00.png", 0))), "00.png"),
    "permis: truncated jpeg": (segmentation("perseg", perseg(lambda r: truncate(r / "Images/object_1/03.jpg"))), "03.jpg"),
    "permis: a file that is not an image": (segmentation("perseg", perseg(lambda r: write_bytes(r / "Images/object_1/02.jpg", b"<html>"))), "02.jpg"),
    "permis: empty dataset": (segmentation("perseg", perseg(lambda r: [shutil.rmtree(p) for p in (r / "Images").iterdir()])), "Images"),
    "permis: unknown dataset": (segmentation("coco", perseg()), "--dataset_file"),
    "permis: missing checkpoint": (lambda c, t: segmentation("perseg", perseg(), "--sam2_checkpoint", t / "sam2.1_hiera_tiny.pt")(c, t), "download_ckpts.sh"),
    "permis: yaml not a SAM2 config": (lambda c, t: segmentation("perseg", perseg(), "--sam2_cfg", c["other_yaml"])(c, t), "--sam2_cfg"),
    "permis: shots too large": (segmentation("perseg", perseg(), "--shots", 4), "--shots"),
    "permis: output folder not writable": (lambda c, t: segmentation("perseg", perseg(), "--output_dir", c["a_file"] / "out")(c, t), "--output_dir"),
    "permis: --device cuda without CUDA": (segmentation("perseg", perseg(), "--device", "cuda"), "--device cuda"),
    "permis: negative number of decoding workers": (segmentation("perseg", perseg(), "--num_workers", -1), "--num_workers"),
    "permis: negative pair batch size": (segmentation("perseg", perseg(), "--pair_batch_size", 0), "--pair_batch_size"),
    "permis: video without a frame": (segmentation("permis", permirs(lambda v: (v / "1.jpg").unlink())), "1.jpg"),
    "permis: video without masks": (segmentation("permis", permirs(lambda v: (v / "masks.npz.npy").unlink())), "masks.npz.npy"),
    "permis: masks of another structure": (segmentation("permis", permirs(lambda v: np.save(v / "masks.npz.npy", np.arange(3)))), "masks.npz.npy"),
    "permis: masks of another size": (segmentation("permis", permirs(lambda v: np.save(v / "masks.npz.npy", np.array([{1: np.ones((4, 4), bool)}] * 3, dtype=object), allow_pickle=True))), "masks.npz.npy"),
    "permis: masks file not an .npy": (segmentation("permis", permirs(lambda v: write_bytes(v / "masks.npz.npy", b"PK\x03\x04 a zip"))), "masks.npz.npy"),
    # search_photos.py: your own photos
    "custom: reference without mask or box": (photos(custom(lambda r: (r / "references/object_0.png").unlink())), "object_0.jpg"),
    "custom: reference with mask and box": (photos(custom(lambda r: write_bytes(r / "references/object_0.txt", b"1 1 9 9"))), "object_0.jpg"),
    "custom: box outside the image": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"10 10 500 30"))), "object_1_2.txt"),
    "custom: box that is not four numbers": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"left top"))), "object_1_2.txt"),
    "custom: empty images folder": (photos(custom(lambda r: [p.unlink() for p in (r / "images").rglob("*.jpg")])), "images"),
    "custom: no photo that can be read": (photos(custom(lambda r: [write_bytes(p, b"not a jpeg") for p in (r / "images").rglob("*.jpg")])), "no photo or video to search (3 skipped)"),
    "custom: a reference that is not an image": (photos(custom(lambda r: write_bytes(r / "references/object_0.jpg", b"GIF89a"))), "object_0.jpg"),
    "custom: prompt line that is neither box nor point": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"10 10 1\n12 13\n"))), "line 2 is neither"),
    "custom: point outside the photo": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"10 10 1\n70 10 0\n"))), "point 70 10 is outside the 64x48 photo"),
    "custom: point label not 0 or 1": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"10 10 2\n"))), "label 2"),
    "custom: no point on the object and no box": (photos(custom(lambda r: write_bytes(r / "references/object_1_2.txt", b"10 10 0\n"))), "no box and no point on the object"),
    "custom: a camera RAW reference": (photos(custom(lambda r: write_bytes(r / "references/object_2.dng", b"II*\x00"))), "camera RAW"),
    "photos: shortlist of 0": (photos(custom(None), "--shortlist", 0), "--shortlist"),
    "custom: no references folder": (photos(custom(lambda r: shutil.rmtree(r / "references"))), "references"),
    # sam2_permir_obj_scores.py
    "permir: unknown score": (retrieval("permir", permirs(lambda v: None), "--score", "area"), "--score"),
    "permir: bad masks file": (retrieval("permir", permirs(lambda v: np.save(v / "masks.npz.npy", np.arange(3)))), "video_1"),
    "permir: foreign cache": (lambda c, t: (sam2_permir_obj_scores, ["--data_path", str(c["permirs"]), "--output_dir", str(c["foreign_cache_dir"]), "--stage", "retrieve", *sam2_args(c)]), "--rebuild_cache"),
    "permir: cache of another data path": (lambda c, t: (sam2_permir_obj_scores, ["--data_path", str(c["ilias"][0]), "--output_dir", str(c["permir_cache_dir"]), "--stage", "retrieve", *sam2_args(c)]), "permir_data.pt"),
    "permir: no cache to retrieve from": (retrieval("permir", permirs(lambda v: None), "--stage", "retrieve"), "--stage cache"),
    "permir: rebuild_cache in stage retrieve": (retrieval("permir", permirs(lambda v: None), "--stage", "retrieve", "--rebuild_cache"), "--stage retrieve"),
    # precompute_features_ilias.py
    "features: missing shard": (features("--split", "db", "--db_shards", "gone-000000.tar"), "gone-000000.tar"),
    "features: truncated tar shard": (features("--split", "db", "--db_shards", "db-000000.tar", "--data_path", lambda c, t: c["truncated_shards"]), "db-000000.tar"),
    "features: empty tar shard": (features("--split", "distractors", "--distractors_shards", "empty-000000.tar", "--data_path", broken_shard("empty-000000.tar", [])), "empty-000000.tar"),
    "features: shard without jpg": (features("--split", "distractors", "--distractors_shards", "text-000000.tar", "--data_path", lambda c, t: c["text_shard"]), "text-000000.tar"),
    "features: corrupt image": (features("--split", "distractors", "--distractors_shards", "bad-000000.tar", "--data_path", broken_shard("bad-000000.tar", [("000009/000000", b"\xff\xd8 truncated", None)])), "--skip_corrupt"),
    "features: boxes that are not numbers": (features("--split", "queries", "--queries_shards", "q-000000.tar", "--data_path", lambda c, t: c["bad_boxes_shard"]("words")), "q-000000.tar"),
    "features: boxes outside the image": (features("--split", "queries", "--queries_shards", "q-000000.tar", "--data_path", lambda c, t: c["bad_boxes_shard"]("outside")), "q-000000.tar"),
    "features: manifests of another resolution": (ilias(precompute_features_ilias, "--split", "queries", "--dinov2", lambda c, t: c["tiny_dinov2"], "--dinov2_resolution", 112, "--output_dir", lambda c, t: c["features"]), "resolution"),
    "features: missing model": (ilias(precompute_features_ilias, "--dinov2", lambda c, t: t / "no_model", "--output_dir", lambda c, t: t / "out"), "--dinov2"),
    # topk_candidates_ilias.py
    "topk: k larger than the database": (lambda c, t: (topk_candidates_ilias, ["--features_dir", str(c["features"]), "--output_dir", str(t / "out"), "--topk", "1000"]), "--topk"),
    "topk: no features": (lambda c, t: (topk_candidates_ilias, ["--features_dir", str(t / "none"), "--output_dir", str(t / "out")]), "manifest.json"),
    "topk: features of another dimension": (lambda c, t: (topk_candidates_ilias, ["--features_dir", str(other_dim_features(c, t)), "--output_dir", str(t / "out"), "--topk", "5"]), "db-000000.npy"),
    # extract_images.py, extract_candidates.py
    "images: missing shard": (ilias(extract_images, "--queries_shards", "gone-000000.tar", "--images_dir", lambda c, t: t / "images", "--output_dir", lambda c, t: t / "out"), "gone-000000.tar"),
    "candidates: depth larger than the top-K": (ilias(extract_candidates, "--rerank_depth", 99, "--topk_dir", lambda c, t: c["stage1"], "--features_dir", lambda c, t: c["features"], "--images_dir", lambda c, t: t / "images", "--output_dir", lambda c, t: t / "out"), "--rerank_depth"),
    "candidates: top-K of another run": (ilias(extract_candidates, "--topk_dir", lambda c, t: c["mismatched_stage1"], "--features_dir", lambda c, t: c["features"], "--images_dir", lambda c, t: t / "images", "--output_dir", lambda c, t: t / "out"), "topk_candidates_ilias.py"),
    # sam2_reranking.py
    "rerank: missing candidate images": (rerank(lambda c, t: c["stage1"], "--rerank_depth", 21), "extract_candidates.py"),
    "rerank: top-K of another run": (rerank(lambda c, t: c["mismatched_stage1"]), "topk_candidates_ilias.py"),
    "rerank: top-K file of another K": (rerank(stage1_with(lambda f: f.joinpath("topk_meta.json").write_text(json.dumps({**json.loads(f.joinpath("topk_meta.json").read_text()), "k": 30})))), "topk_candidates_ilias.py"),
    "rerank: depth larger than the top-K": (rerank(lambda c, t: c["stage1"], "--rerank_depth", 22), "--rerank_depth"),
    "rerank: an image that is not a JPEG": (rerank(stage1_with(lambda f: write_bytes(f / "images" / "object_000" / "query" / "Q000_00.jpg", b"GIF89a"))), "Q000_00.jpg"),
    "rerank: head of another SAM2 size": (rerank(lambda c, t: c["stage1"], "--head_checkpoint", "FOREIGN_HEAD"), "--head_checkpoint"),
    # train_revisitop.py
    "train: missing dataset folder": (train("rparis6k", lambda c, t: c["revisitop"]), "rparis6k"),
    "train: gnd without keys": (train("roxford5k", lambda c, t: c["broken_revisitop"]), "gnd_roxford5k.pkl"),
    "train: UnED image missing": (train("uned", uned_info(lambda r: (r / "images" / json.loads(info_file(r).read_text())[0]["path"]).unlink()), "--uned_domains", "cars"), "train.json"),
    "train: UnED json that is not a list": (train("uned", uned_info(lambda r: info_file(r).write_text('{"path": "a.jpg"}')), "--uned_domains", "cars"), "train.json"),
    "train: UnED json that is not JSON": (train("uned", uned_info(lambda r: info_file(r).write_text("path,class_id\n")), "--uned_domains", "cars"), "train.json"),
    "train: resume another head": (train("roxford5k", lambda c, t: c["revisitop"], "--resume", "--output_dir", "TRAINED", "--score", "object"), "last.pt"),
    "train: validation share of 1": (train("roxford5k", lambda c, t: c["revisitop"], "--val_fraction", 1), "--val_fraction"),
    # make_demo_data.py
    "demo data: no objects": (lambda c, t: (make_demo_data, ["--objects", "0", "--output_dir", str(t / "demo")]), "--objects"),
    "demo data: a PerSeg object without a target": (lambda c, t: (make_demo_data, ["--layout", "perseg", "--images", "1", "--output_dir", str(t / "demo")]), "--images 1"),
}


@pytest.fixture(scope="module")
def ctx(tiny_sam2, tiny_dinov2, ilias, features, tmp_path_factory):
    root, info = ilias
    tmp = tmp_path_factory.mktemp("bad_inputs")
    stage1 = tmp / "stage1"
    topk_candidates_ilias.main(topk_candidates_ilias.get_args_parser().parse_args(
        ["--features_dir", str(features), "--output_dir", str(stage1), "--topk", "21"]))
    extract_images.main(extract_images.get_args_parser().parse_args(
        [*source_args(root, info), "--images_dir", str(stage1 / "images"), "--output_dir", str(tmp / "ei")]))
    extract_candidates.main(extract_candidates.get_args_parser().parse_args(
        [*source_args(root, info), "--rerank_depth", "5", "--topk_dir", str(stage1), "--features_dir", str(features),
         "--images_dir", str(stage1 / "images"), "--output_dir", str(tmp / "ec")]))
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
    permirs_root = write_permirs(tmp / "permirs", num_videos=2)
    permir_cache_dir = tmp / "permir_cache"
    sam2_permir_obj_scores.main(sam2_permir_obj_scores.get_args_parser().parse_args(
        ["--data_path", str(permirs_root), "--output_dir", str(permir_cache_dir), "--stage", "cache"]))
    truncated_shards = tmp / "truncated"
    truncated_shards.mkdir()
    data = (root / info["db"][0]).read_bytes()
    (truncated_shards / info["db"][0]).write_bytes(data[:len(data) // 2])
    text_shard = tmp / "text"
    text_shard.mkdir()
    import tarfile
    with tarfile.open(text_shard / "text-000000.tar", "w") as tar:  # samples with a txt, no jpg
        note = tmp / "note.txt"
        note.write_text("hello")
        tar.add(note, arcname="000000/000000.txt")
    jpeg = info["samples"]["object_000/query/Q000_00"][0]

    def bad_boxes_shard(kind):
        folder = tmp / f"boxes_{kind}"
        boxes = [["x", 1, 2, 3]] if kind == "words" else [[500, 500, 10, 10]]
        write_webdataset_tar(folder / "q-000000.tar", [("object_000/query/Q000_00", jpeg, boxes)])
        return folder

    foreign_head = tmp / "head.pt"
    torch.save({"head": {}, "architecture": "0123456789abcdef", "sam2_cfg": "sam2.1_hiera_l.yaml"}, foreign_head)
    revisitop = write_revisitop(tmp / "revisitop")
    broken_revisitop = write_revisitop(tmp / "broken_revisitop")
    import pickle
    with open(broken_revisitop / "roxford5k" / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump({"imlist": []}, f)
    trained = tmp / "trained"
    cfg, ckpt = tiny_sam2
    train_revisitop.main(train_revisitop.get_args_parser().parse_args(
        ["--dataset_file", "roxford5k", "--data_path", str(revisitop), "--output_dir", str(trained), "--epochs", "1",
         "--samples_per_epoch", "2", "--triplets_per_step", "2", "--val_fraction", "0.4", "--sam2_cfg", str(cfg),
         "--sam2_checkpoint", str(ckpt), "--device", "cpu"]))
    return {"tiny_sam2": tiny_sam2, "tiny_dinov2": tiny_dinov2, "ilias": ilias, "features": features,
            "stage1": stage1, "mismatched_stage1": mismatched, "other_yaml": other_yaml, "a_file": a_file,
            "permirs": permirs_root, "foreign_cache_dir": foreign_cache_dir, "permir_cache_dir": permir_cache_dir,
            "truncated_shards": truncated_shards, "text_shard": text_shard, "bad_boxes_shard": bad_boxes_shard,
            "foreign_head": foreign_head, "revisitop": revisitop, "broken_revisitop": broken_revisitop,
            "trained": trained}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(case, ctx, tmp_path, monkeypatch, capsys):
    make, named = CASES[case]
    module, argv = make(ctx, tmp_path)
    argv = [{"FOREIGN_HEAD": str(ctx["foreign_head"]), "TRAINED": str(ctx["trained"])}.get(a, a) for a in argv]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, module.get_args_parser())
    # the one error line, after a line for each file of a library left out (skipped, not an error)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: skipped: ")]
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "out" / "metrics.json").exists()
