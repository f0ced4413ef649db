"""ILIAS first stage end to end on generated shards with a tiny random DINOv2: features,
top-K, image and candidate extraction."""
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import extract_candidates
import extract_images
import topk_candidates_ilias as topk_script
from conftest import run_one_and_two_processes
from ilias_data import extract, ilias_map_by_definition, source_args
from utils.synthetic import write_webdataset_tar
from utils import dinov2
from utils.errors import UserError


def run_topk(features_dir, output_dir, *extra):  # extra: e.g. --topk 21
    argv = ["--features_dir", str(features_dir), "--output_dir", str(output_dir), *map(str, extra)]
    return topk_script.main(topk_script.get_args_parser().parse_args(argv))


def split_arrays(features_dir, split):
    manifest = json.loads((features_dir / split / "manifest.json").read_text())
    feats = [np.load(features_dir / split / e["file"])[:e["count"]] for e in manifest["shards"]]
    keys = [k for e in manifest["shards"]
            for k in json.loads((features_dir / split / e["file"].replace(".npy", ".json")).read_text())["keys"][:e["count"]]]
    return np.concatenate(feats), keys, manifest


def test_features_are_the_model_outputs(ilias, features, tiny_dinov2):
    root, info = ilias
    model = dinov2.load_dinov2(str(tiny_dinov2), "cpu")
    for split in ("queries", "db"):
        feats, keys, manifest = split_arrays(features, split)
        assert manifest["model"] == str(tiny_dinov2) and manifest["resolution"] == 56
        assert manifest["preprocess"] == "large_side" and manifest["query_crop"] == "none"
        assert keys == [k for k in info["samples"] if f"/{'query' if split == 'queries' else 'pos'}/" in k]
        for i in (0, len(keys) - 1):
            jpeg, _ = info["samples"][keys[i]]
            image = Image.open(io.BytesIO(jpeg)).convert("RGB")  # whole images, queries too
            want = dinov2.embed(model, dinov2.preprocess(image, 56, "large_side", 14)[None])[0].numpy()
            np.testing.assert_allclose(feats[i], want, atol=1e-5)
    distractors, _, manifest = split_arrays(features, "distractors")
    assert manifest["total"] == 9 and [e["count"] for e in manifest["shards"]] == [5, 4]
    np.testing.assert_allclose(np.linalg.norm(distractors, axis=1), 1, atol=1e-5)


def test_ilias_core_folders_give_the_same_features(ilias, features, tiny_dinov2, tmp_path):
    root, info = ilias
    extract(root, info, tiny_dinov2, tmp_path, "--split", "queries", queries=["ilias_core"])
    extract(root, info, tiny_dinov2, tmp_path, "--split", "db", db=["ilias_core"])
    for split in ("queries", "db"):
        got, got_keys, _ = split_arrays(tmp_path, split)
        want, want_keys, _ = split_arrays(features, split)
        assert got_keys == want_keys
        np.testing.assert_array_equal(got, want)


def brute_force_topk(queries, database, k):
    scores = queries @ database.T
    order = np.lexsort((np.broadcast_to(np.arange(len(database)), scores.shape), -scores), axis=1)[:, :k]
    return order


def test_topk_equals_brute_force(features, tmp_path, capsys):
    metrics = run_topk(features, tmp_path, "--topk", 21)
    printed = capsys.readouterr().out
    queries, query_keys, _ = split_arrays(features, "queries")
    db, db_keys, _ = split_arrays(features, "db")
    distractors, _, _ = split_arrays(features, "distractors")
    database = np.concatenate([db, distractors])
    indices = np.load(tmp_path / "topk_indices.npy")
    assert indices.dtype == np.int64 and indices.shape == (6, 21)
    # the last distractor repeats db image 0: an exact tie, broken by the lower index
    assert np.array_equal(database[0], database[-1])
    np.testing.assert_array_equal(indices, brute_force_topk(queries, database, 21))
    scores = np.load(tmp_path / "topk_scores.npy")
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ database.T, indices, axis=1), atol=1e-6)
    tied = np.isin(indices, [0, len(database) - 1]).sum(axis=1) == 2
    assert tied.any()  # some query ranks both twins: the official AP groups their equal scores
    want = ilias_map_by_definition(indices, scores, query_keys, db_keys)
    assert metrics["map@1k"] == pytest.approx(want, abs=1e-9)
    assert f"{want:.2f}" in printed
    assert json.loads((tmp_path / "topk_meta.json").read_text())["k"] == 21


def test_resume_skips_finished_shards(ilias, features, tiny_dinov2, tmp_path):
    root, info = ilias
    out = tmp_path / "resumed"
    # a run that stopped after the first distractor shard...
    extract(root, info, tiny_dinov2, out, "--split", "distractors", distractors=info["distractors"][:1])
    # ...is rerun on all shards; the finished shard is not read again (its tar is now broken)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(root):
        if name.endswith(".tar"):
            (broken / name).write_bytes((root / name).read_bytes())
    (broken / info["distractors"][0]).write_bytes(b"not a tar")
    extract(broken, info, tiny_dinov2, out, "--split", "distractors")
    for name in ("distractors-000000.npy", "distractors-000001.npy", "distractors-000000.json",
                 "distractors-000001.json", "manifest.json"):
        assert (out / "distractors" / name).read_bytes() == (features / "distractors" / name).read_bytes()


def test_max_distractors(ilias, tiny_dinov2, tmp_path):
    root, info = ilias
    result = extract(root, info, tiny_dinov2, tmp_path, "--split", "distractors", "--max_distractors", 6)
    manifest = json.loads((tmp_path / "distractors" / "manifest.json").read_text())
    assert result["distractors"]["images"] == 6 and [e["count"] for e in manifest["shards"]] == [5, 1]


def test_corrupt_image(ilias, tiny_dinov2, tmp_path):
    root, info = ilias
    bad = tmp_path / "data"
    write_webdataset_tar(bad / "bad-000000.tar", [("000009/000000", b"\xff\xd8 truncated", None),
                                       ("000009/000001", info["samples"]["object_000/pos/P000_00"][0], None)])
    with pytest.raises(UserError, match="corrupt image 000009/000000"):
        extract(bad, {**info, "distractors": ["bad-000000.tar"]}, tiny_dinov2, tmp_path / "a",
                "--split", "distractors")
    extract(bad, {**info, "distractors": ["bad-000000.tar"]}, tiny_dinov2, tmp_path / "b",
            "--split", "distractors", "--skip_corrupt")
    manifest = json.loads((tmp_path / "b" / "distractors" / "manifest.json").read_text())
    assert manifest["total"] == 1 and manifest["shards"][0]["corrupt"] == 1


def test_images_and_candidates(ilias, features, tmp_path):
    root, info = ilias
    run_topk(features, tmp_path, "--topk", 21)
    images = tmp_path / "images"
    argv = [*source_args(root, info), "--images_dir", str(images), "--output_dir", str(tmp_path / "extract")]
    first = extract_images.main(extract_images.get_args_parser().parse_args(argv))
    assert first["queries"]["written"] == 6 and first["db"]["written"] == 12
    assert (tmp_path / "extract" / "metrics.json").is_file() and not (images / "metrics.json").exists()
    again = extract_images.main(extract_images.get_args_parser().parse_args(argv))
    assert again["db"]["written"] == 0 and again["db"]["already_present"] == 12
    for key, (jpeg, _) in info["samples"].items():
        assert (images / f"{key}.jpg").read_bytes() == jpeg

    argv = [*source_args(root, info), "--rerank_depth", "15", "--topk_dir", str(tmp_path),
            "--features_dir", str(features), "--images_dir", str(images), "--output_dir", str(tmp_path / "cand")]
    counts = extract_candidates.main(extract_candidates.get_args_parser().parse_args(argv))
    indices = np.load(tmp_path / "topk_indices.npy")[:, :15]
    _, distractor_keys, _ = split_arrays(features, "distractors")
    needed = {distractor_keys[i - 12] for i in np.unique(indices[indices >= 12])}
    assert counts["needed"] == len(needed) > 0 and counts["written"] == len(needed)
    for key in needed:
        assert (images / f"{key}.jpg").read_bytes() == info["distractor_samples"][key]
    written = {str(p.relative_to(images).with_suffix("")) for p in images.rglob("*.jpg")}
    assert written == needed | set(info["samples"])  # the folder holds exactly what was extracted
    rerun = extract_candidates.main(extract_candidates.get_args_parser().parse_args(argv))
    assert rerun["written"] == 0 and rerun["already_present"] == len(needed) and rerun["shards_read"] == 0
    with pytest.raises(UserError, match="larger than the top-K width"):
        extract_candidates.main(extract_candidates.get_args_parser().parse_args([*argv, "--rerank_depth", "22"]))
    meta = json.loads((tmp_path / "topk_meta.json").read_text())
    (tmp_path / "topk_meta.json").write_text(json.dumps({**meta, "db": 99}))
    with pytest.raises(UserError, match="do not match each other or the features"):
        extract_candidates.main(extract_candidates.get_args_parser().parse_args(argv))


def test_torchrun_two_processes_equal_one(ilias, tiny_dinov2, tmp_path):
    root, info = ilias
    one, two = run_one_and_two_processes(
        "precompute_features_ilias.py",
        lambda out: [*source_args(root, info), "--dinov2", str(tiny_dinov2), "--dinov2_resolution", "56",
                     "--output_dir", str(out), "--dinov2_batch_size", "4", "--num_workers", "1", "--device", "cpu"],
        tmp_path)
    for split in ("queries", "db", "distractors"):
        manifest = json.loads((one / split / "manifest.json").read_text())
        assert json.loads((two / split / "manifest.json").read_text()) == manifest
        for entry in manifest["shards"]:
            assert (two / split / entry["file"]).read_bytes() == (one / split / entry["file"]).read_bytes()


def test_large_side_preprocessing_by_hand():
    """ILIAS's official RESIZE_LARGE (larger side to R, the other floored, aspect kept) and
    DINOv2's MultiplierPadding(14) (zeros after normalisation, the smaller half before)."""
    gradient = Image.fromarray(np.tile(np.arange(90, dtype=np.uint8)[None, :, None], (61, 1, 3)))
    pixels = dinov2.preprocess(gradient, 56, "large_side", 14)
    assert pixels.shape == (3, 42, 56)  # 61/90 * 56 = 37.96 -> 37 rows, padded by 2 + 3 to 42
    assert torch.equal(pixels[:, :2], torch.zeros(3, 2, 56)) and torch.equal(pixels[:, 39:], torch.zeros(3, 3, 56))
    want = dinov2._normalised(gradient.resize((56, 37), Image.BICUBIC))
    assert torch.equal(pixels[:, 2:39], want)
    assert dinov2.preprocess(Image.new("RGB", (50, 100)), 56, "large_side", 14).shape == (3, 56, 28)
    assert dinov2.preprocess(Image.new("RGB", (100, 50)), 56, "short_side_crop", 14).shape == (3, 56, 56)


def test_query_box_is_clamped_to_the_image():
    from utils.ilias_store import union_box
    assert union_box([[-5, 10, 30, 20], [50, 2, 40, 8]], 80, 60) == (0, 2, 80, 30)


def test_images_of_other_shapes_keep_their_shard_order(tiny_dinov2, tmp_path):
    """Batches hold one image shape (landscape and portrait here); features come back in the
    shard's order, each equal to the image's own forward."""
    from utils.synthetic import render_object, render_scene

    rng, obj = np.random.default_rng(5), render_object(11)
    samples = []
    for i in range(5):
        size = (60, 80) if i % 2 else (80, 60)
        buf = io.BytesIO()
        render_scene(rng, obj, *size, scale=0.5)[0].save(buf, "JPEG")
        samples.append((f"{i:06d}/{i:06d}", buf.getvalue(), None))
    write_webdataset_tar(tmp_path / "mixed-000000.tar", samples)
    info = {"queries": [], "db": [], "distractors": ["mixed-000000.tar"]}
    extract(tmp_path, info, tiny_dinov2, tmp_path / "out", "--split", "distractors", queries=["q"], db=["d"])
    feats, keys, _ = split_arrays(tmp_path / "out", "distractors")
    assert keys == [key for key, _, _ in samples]
    model = dinov2.load_dinov2(str(tiny_dinov2), "cpu")
    for i, (_, jpeg, _) in enumerate(samples):
        pixels = dinov2.preprocess(Image.open(io.BytesIO(jpeg)), 56, "large_side", 14)
        np.testing.assert_allclose(feats[i], dinov2.embed(model, pixels[None])[0].numpy(), atol=1e-5)
