"""The GPU check (`make gpu-check`): every stage on the test fixtures on the GPU, in fp32, with --amp
and with --compile, gives its CPU fp32 results (scores within 1e-3; masks equal on >= 99.9% of
pixels, >= 99.5% with --amp, whose bf16 features move a mask's edge by itself: on the CPU amp and
fp32 agree on 99.84-99.88% of the pixels of these random-weight masks, 99.78% in bench.py on the
real architecture), and as many processes as GPUs give one process's bytes. Skipped where CUDA
is not available.
GPU_CHECK_DEVICE names the device to check (`GPU_CHECK_DEVICE=cpu` runs the same comparisons on
the CPU: a check of this file's own logic)."""
import os

import numpy as np
import pytest
import torch

import precompute_features_ilias
import sam2_permir_obj_scores
import sam2_permis
import sam2_reranking
import search_photos
import train_revisitop
from conftest import launch, write_permirs
from ilias_data import source_args
from train_data import write_revisitop
from utils.images import read_mask
from utils.synthetic import write_custom

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                                  reason="no CUDA here: run `make gpu-check` on a GPU machine")]
MODES = {"fp32": [], "amp": ["--amp"], "compile": ["--compile"]}
MASK_AGREEMENT = {"fp32": 0.999, "amp": 0.995, "compile": 0.999}
SCORE_TOLERANCE = 1e-3
SCRIPTS = {"perseg": sam2_permis, "permis": sam2_permis, "permir": sam2_permir_obj_scores, "photos": search_photos,
           "rerank": sam2_reranking, "train": train_revisitop}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, perseg_root, stage1, features, tiny_sam2):
    folder = tmp_path_factory.mktemp("gpu_check")
    write_custom(folder / "photos", num_objects=2, num_images=5, seed=5, size=(72, 96))
    return {"perseg": perseg_root, "permirs": write_permirs(folder / "permirs", num_videos=4),
            "photos": folder / "photos", "revisitop": write_revisitop(folder / "revisitop"), "stage1": stage1,
            "features": features, "model": tiny_sam2}


def stage_argv(stage: str, f: dict, device: str, mode: str) -> list[str]:
    cfg, ckpt = f["model"]
    sam2 = ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", device, *MODES[mode]]
    return {
        "perseg": ["--dataset_file", "perseg", "--data_path", str(f["perseg"]), "--save_masks"],
        "permis": ["--dataset_file", "permis", "--data_path", str(f["permirs"]), "--save_masks"],
        "permir": ["--data_path", str(f["permirs"])],
        "photos": ["--data_path", str(f["photos"])],
        "rerank": ["--topk_dir", str(f["stage1"]), "--features_dir", str(f["features"]), "--images_dir",
                   str(f["stage1"] / "images"), "--rerank_depth", "5"],
        "train": ["--dataset_file", "roxford5k", "--data_path", str(f["revisitop"]), "--epochs", "1",
                  "--samples_per_epoch", "4", "--triplets_per_step", "2", "--num_negatives", "2", "--val_fraction", "0"],
    }[stage] + sam2


def run_stage(stage: str, f: dict, device: str, mode: str, out):
    module = SCRIPTS[stage]
    module.main(module.get_args_parser().parse_args([*stage_argv(stage, f, device, mode), "--output_dir", str(out)]))
    return results_of(stage, out)


def results_of(stage: str, out) -> tuple[np.ndarray, dict]:
    """(the scores, in a fixed order; the masks by file): every SAM2 stage saves its pairs' IoU and
    object-score logit in parts; training, its head."""
    if stage == "train":
        head = torch.load(out / "head_last.pt", weights_only=True)["head"]
        return torch.cat([head[name].flatten() for name in sorted(head)]).numpy(), {}
    scores = []
    for part in sorted((out / "parts").glob("chunk_*.npz")):
        with np.load(part) as saved:
            scores += [saved["iou"], saved["object_score_logit"]]
    masks = {p.relative_to(out): read_mask(p) for p in sorted((out / "masks").rglob("*.png"))}
    return np.concatenate(scores), masks


@pytest.fixture(scope="module")
def on_cpu(fixtures, tmp_path_factory):
    """Each stage's fp32 CPU results, the reference."""
    return {stage: run_stage(stage, fixtures, "cpu", "fp32", tmp_path_factory.mktemp(f"cpu_{stage}"))
            for stage in SCRIPTS}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("stage", list(SCRIPTS))
def test_stage_on_the_gpu_gives_the_cpu_results(stage, mode, fixtures, on_cpu, tmp_path):
    scores, masks = run_stage(stage, fixtures, DEVICE, mode, tmp_path)
    want_scores, want_masks = on_cpu[stage]
    assert scores.shape == want_scores.shape and scores.size
    np.testing.assert_allclose(scores, want_scores, atol=SCORE_TOLERANCE, rtol=0)
    assert masks.keys() == want_masks.keys()
    if masks:
        agreement = sum(int((masks[k] == want_masks[k]).sum()) for k in masks) / sum(m.size for m in masks.values())
        assert agreement >= MASK_AGREEMENT[mode], f"masks agree on {agreement:.4%} of pixels"


@pytest.mark.parametrize("mode", ["fp32", "amp"])
def test_features_on_the_gpu_give_the_cpu_features(mode, ilias, tiny_dinov2, tmp_path):
    root, info = ilias
    features = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / device
        precompute_features_ilias.main(precompute_features_ilias.get_args_parser().parse_args(
            [*source_args(root, info), "--split", "db", "--dinov2", str(tiny_dinov2), "--dinov2_resolution", "56",
             "--device", device, "--output_dir", str(out), *(MODES[mode] if device == DEVICE else [])]))
        features[device] = np.concatenate([np.load(p) for p in sorted((out / "db").glob("*.npy"))])
    cosine = (features["cpu"] * features[DEVICE]).sum(axis=1)
    assert cosine.min() > 0.999


def test_as_many_processes_as_gpus_give_one_process_bytes(fixtures, tmp_path):
    processes = torch.cuda.device_count() if DEVICE == "cuda" else 2
    outputs = {}
    for count in (1, processes):
        out = tmp_path / f"processes_{count}"
        launch("sam2_permir_obj_scores.py", [*stage_argv("permir", fixtures, DEVICE, "fp32"), "--output_dir", str(out),
                                             "--chunk_size", "2"], count)
        outputs[count] = (out / "scores.npy").read_bytes()
    assert outputs[processes] == outputs[1]
