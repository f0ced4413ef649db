"""Long stages killed with SIGKILL at several points, then rerun, end with outputs byte-identical
to an uninterrupted run (training: the same head as the same number of uninterrupted epochs)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, write_permirs
from ilias_data import make_ilias, source_args
from train_data import write_revisitop
from utils.synthetic import write_custom

# the same thread count everywhere: float sums in another order would differ in the last bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LATE = 0.85  # a second kill point: this fraction of the uninterrupted run's wall time


def command(script, *args):
    return [sys.executable, str(REPO / script), *map(str, args)]


def run(cmd):
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return time.perf_counter() - start


def run_killed(cmd, when=None, after_seconds=None) -> bool:
    """Start cmd and SIGKILL it once `when()` holds (polled) or after some seconds; True if it
    was killed before finishing."""
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    start = time.perf_counter()
    while process.poll() is None:
        if (when is not None and when()) or (after_seconds is not None and time.perf_counter() - start > after_seconds):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    return False


def files(folder):
    """The outputs, without the hidden temporary files a killed write leaves (nothing reads them)
    and the lock file; metrics.json without its run record."""
    def content(path):
        if path.name == "metrics.json":
            return {k: v for k, v in json.loads(path.read_text()).items() if k != "run"}
        return path.read_bytes()
    return {p.relative_to(folder): content(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def check_resumes(make_cmd, outputs, first_part, tmp_path, ignore=()):
    """Run uninterrupted; then, killed as soon as `first_part(out)` exists and killed late, each
    rerun must end with the same files (metrics.json: the same numbers; its run record names the
    output folder). `ignore`: files that legitimately differ (a resumed run's encoder count)."""
    reference = tmp_path / "reference"
    seconds = run(make_cmd(reference))
    want = {k: v for k, v in files(outputs(reference)).items() if k.name not in ignore}
    for point in ("first part written", "late"):
        target = tmp_path / point.replace(" ", "_")
        killed = run_killed(make_cmd(target), when=(lambda: first_part(target).exists()) if point != "late" else None,
                            after_seconds=LATE * seconds if point == "late" else None)
        assert killed or point == "late", "the run ended before it could be killed"
        run(make_cmd(target))
        got = {k: v for k, v in files(outputs(target)).items() if k.name not in ignore}
        assert got.keys() == want.keys(), point
        for name in want:
            assert got[name] == want[name], (point, name)


@pytest.fixture(scope="module")
def ilias_many_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilias_many")
    return root, make_ilias(root, distractor_shards=(6, 6, 6, 6, 6, 6))


def test_feature_extraction(ilias_many_shards, tiny_dinov2, tmp_path):
    root, info = ilias_many_shards
    check_resumes(lambda out: command("precompute_features_ilias.py", *source_args(root, info), "--dinov2", tiny_dinov2,
                                      "--dinov2_resolution", 56, "--dinov2_batch_size", 2, "--num_workers", 1,
                                      "--device", "cpu", "--output_dir", out),
                  lambda out: out, lambda out: out / "distractors" / "distractors-000000.json", tmp_path)


def test_candidate_extraction_and_reranking(ilias, features, tiny_sam2, tmp_path):
    root, info = ilias
    stage1 = tmp_path / "stage1"
    run(command("topk_candidates_ilias.py", "--features_dir", features, "--output_dir", stage1, "--topk", 21))
    run(command("extract_images.py", *source_args(root, info), "--images_dir", stage1 / "images",
                "--output_dir", tmp_path / "extract_images"))
    check_resumes(lambda out: command("extract_candidates.py", *source_args(root, info), "--rerank_depth", 10,
                                      "--topk_dir", stage1, "--features_dir", features, "--images_dir", out / "images",
                                      "--output_dir", out / "run"),
                  lambda out: out / "images", lambda out: out / "images" / "000000", tmp_path / "candidates")
    run(command("extract_candidates.py", *source_args(root, info), "--rerank_depth", 10, "--topk_dir", stage1,
                "--features_dir", features, "--images_dir", stage1 / "images", "--output_dir", tmp_path / "extract"))
    cfg, ckpt = tiny_sam2
    check_resumes(lambda out: command("sam2_reranking.py", "--topk_dir", stage1, "--features_dir", features,
                                      "--images_dir", stage1 / "images", "--output_dir", out, "--rerank_depth", 10,
                                      "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt, "--device", "cpu",
                                      "--chunk_size", 3),
                  lambda out: out, lambda out: out / "parts" / "chunk_00000.npz", tmp_path / "rerank",
                  ignore=("metrics.json",))


def test_permir_cache_and_parts(tiny_sam2, tmp_path):
    data = write_permirs(tmp_path / "permirs", num_videos=4)
    cfg, ckpt = tiny_sam2
    base = ["--dataset_file", "permir", "--data_path", data, "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt, "--device", "cpu",
            "--chunk_size", 2]
    check_resumes(lambda out: command("sam2_permir_obj_scores.py", *base, "--output_dir", out), lambda out: out,
                  lambda out: out / "permir_data.pt", tmp_path / "cache")
    check_resumes(lambda out: command("sam2_permir_obj_scores.py", *base, "--output_dir", out), lambda out: out,
                  lambda out: out / "parts" / "chunk_00000.npz", tmp_path / "parts")


def test_segmentation(tiny_sam2, perseg_root, tmp_path):
    cfg, ckpt = tiny_sam2
    check_resumes(lambda out: command("sam2_permis.py", "--dataset_file", "perseg", "--data_path", perseg_root,
                                      "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt, "--device", "cpu", "--chunk_size", 1,
                                      "--save_masks", "--output_dir", out),
                  lambda out: out, lambda out: out / "parts" / "chunk_00000.npz", tmp_path)


def test_photo_search(tiny_sam2, tiny_dinov2, tmp_path):
    photos = tmp_path / "photos"
    write_custom(photos, num_objects=2, num_images=8, seed=2, size=(72, 96))
    cfg, ckpt = tiny_sam2
    check_resumes(lambda out: command("search_photos.py", "--data_path", photos, "--sam2_cfg", cfg, "--sam2_checkpoint",
                                      ckpt, "--device", "cpu", "--chunk_size", 2, "--dinov2", tiny_dinov2,
                                      "--dinov2_resolution", 56, "--shortlist", 6, "--index_dir", out / "index",
                                      "--output_dir", out / "search"),
                  lambda out: out, lambda out: out / "search" / "parts" / "chunk_00000.npz", tmp_path)


def test_training_resume(tiny_sam2, tmp_path):
    data = write_revisitop(tmp_path / "revisitop")
    cfg, ckpt = tiny_sam2
    args = ["--dataset_file", "roxford5k", "--data_path", data, "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt,
            "--device", "cpu", "--epochs", 3, "--samples_per_epoch", 4, "--triplets_per_step", 2, "--num_negatives", 2,
            "--val_fraction", 0.4, "--val_anchors", 2, "--val_negatives", 3, "--lr", "1e-2"]
    reference = tmp_path / "reference"
    run(command("train_revisitop.py", *args, "--output_dir", reference))
    want = torch.load(reference / "head_epoch3.pt", weights_only=True)["head"]
    for epoch in (1, 2):  # killed in the epoch after this one was saved
        out = tmp_path / f"killed_after_epoch{epoch}"
        assert run_killed(command("train_revisitop.py", *args, "--output_dir", out),
                          when=lambda: (out / f"head_epoch{epoch}.pt").exists())
        run(command("train_revisitop.py", *args, "--output_dir", out, "--resume"))
        got = torch.load(out / "head_epoch3.pt", weights_only=True)["head"]
        assert all(torch.equal(got[name], want[name]) for name in want), epoch
