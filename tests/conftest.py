"""Shared fixtures: a shrunk random SAM2 (config yaml + official-format checkpoint) and small
synthetic datasets in the official formats."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

from tiny_sam2 import TINY_CFG, TINY_OVERRIDES
from utils.sam2_model import build_sam2_model, lift_object_scores
from utils.synthetic import render_object, render_scene, write_jpeg, write_perseg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sam2(tmp_path_factory):
    """(config yaml path, checkpoint path) of a shrunk SAM2.1 with seeded random weights."""
    folder = tmp_path_factory.mktemp("tiny_sam2")
    cfg_path = folder / "sam2.1_tiny_test.yaml"
    OmegaConf.save(compose(config_name=TINY_CFG, overrides=TINY_OVERRIDES), cfg_path)
    torch.manual_seed(0)
    model = build_sam2_model(str(cfg_path), None)
    # random weights score every object as absent; lift the object-score head so masks appear
    lift_object_scores(model)
    ckpt_path = folder / "sam2.1_tiny_test.pt"
    torch.save({"model": model.state_dict()}, ckpt_path)
    return cfg_path, ckpt_path


@pytest.fixture(scope="session")
def demo_photos(tmp_path_factory):
    """The demo sample (make_demo_data.py): 2 objects, each with a mask shot and a box shot, and 6
    photos in images/{indoor,outdoor}/."""
    import make_demo_data

    root = tmp_path_factory.mktemp("demo_photos")
    make_demo_data.main(make_demo_data.get_args_parser().parse_args(
        ["--output_dir", str(root), "--objects", "2", "--images", "6", "--seed", "3"]))
    return root


@pytest.fixture(scope="session")
def perseg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("perseg")
    write_perseg(root, num_objects=2, images_per_object=4, seed=1, size=(72, 96))
    return root


def write_permirs(root, num_videos=3, seed=0, size=(72, 96), tiny_target_video=None):
    """A PerMIRS-format folder: <video>/{0,1,2}.jpg and masks.npz.npy (pickled list of 3 dicts).
    In `tiny_target_video`, the frame-1 mask is shrunk under 0.5% of the image."""
    rng = np.random.default_rng(seed)
    for v in range(num_videos):
        video = Path(root) / f"video_{v}"
        obj = render_object(seed * 100 + v)
        masks = []
        for f in range(3):
            image, mask = render_scene(rng, obj, *size, scale=float(rng.uniform(0.3, 0.5)))
            if v == tiny_target_video and f == 1:
                mask = np.zeros_like(mask)
                mask[:2, :2] = True
            write_jpeg(video / f"{f}.jpg", image)
            masks.append({7 + v: mask})
        video.mkdir(parents=True, exist_ok=True)
        np.save(video / "masks.npz.npy", np.array(masks, dtype=object), allow_pickle=True)
    return Path(root)


@pytest.fixture(scope="session")
def permirs_root(tmp_path_factory):
    return write_permirs(tmp_path_factory.mktemp("permirs"), tiny_target_video=2)


def run_script(script: str, *args, cwd=None, env=None):
    """Run a top-level script as a user would (with `env` added to the environment); returns the
    CompletedProcess."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A local folder holding a tiny random DINOv2 (transformers format)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, image_size=56, patch_size=14)
    folder = tmp_path_factory.mktemp("tiny_dinov2")
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ilias(tmp_path_factory):
    """(root, info) of generated ILIAS shards and ilias_core folders."""
    from ilias_data import make_ilias

    root = tmp_path_factory.mktemp("ilias")
    return root, make_ilias(root)


ILIAS_TOPK, ILIAS_RERANK_DEPTH = 21, 5  # K and k of the stage-1 fixture


@pytest.fixture(scope="session")
def stage1(ilias, features, tmp_path_factory):
    """Top-21 lists of the ILIAS fixture and the images its re-ranking to depth 5 reads (queries,
    db, needed distractors)."""
    import extract_candidates
    import extract_images
    import topk_candidates_ilias
    from ilias_data import source_args

    root, info = ilias
    out = tmp_path_factory.mktemp("stage1")
    topk_candidates_ilias.main(topk_candidates_ilias.get_args_parser().parse_args(
        ["--features_dir", str(features), "--output_dir", str(out), "--topk", str(ILIAS_TOPK)]))
    images = out / "images"
    extract_images.main(extract_images.get_args_parser().parse_args(
        [*source_args(root, info), "--images_dir", str(images), "--output_dir", str(out / "extract_images")]))
    extract_candidates.main(extract_candidates.get_args_parser().parse_args(
        [*source_args(root, info), "--rerank_depth", str(ILIAS_RERANK_DEPTH), "--topk_dir", str(out),
         "--features_dir", str(features), "--images_dir", str(images), "--output_dir", str(out / "extract_candidates")]))
    return out


@pytest.fixture(scope="session")
def features(ilias, tiny_dinov2, tmp_path_factory):
    """Features of every ILIAS split, extracted with the tiny DINOv2."""
    from ilias_data import extract

    root, info = ilias
    out = tmp_path_factory.mktemp("features")
    extract(root, info, tiny_dinov2, out)
    return out


def launch(script: str, argv: list[str], processes: int = 1) -> None:
    """Run a script as one process, or under torchrun as `processes` (gloo, CPU), each with one
    thread (float sums in another order would differ in the last bit); the test fails if it fails."""
    command = [sys.executable, str(REPO / script)] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         str(REPO / script)]  # --standalone: a free port of its own
    result = subprocess.run([*command, *argv], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def run_one_and_two_processes(script: str, make_argv, tmp_path):
    """Run a script as one process and under a 2-process torchrun; returns the two output folders."""
    for name, processes in (("one", 1), ("two", 2)):
        launch(script, make_argv(tmp_path / name), processes)
    return tmp_path / "one", tmp_path / "two"
