"""Runs where the users are: each process on its own GPU, every long stage split across processes
with the same bytes as one process, and jobs that resume with another number of processes."""
import importlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, launch, run_one_and_two_processes, write_permirs
from media import moving_scenes, write_clip
from train_data import write_revisitop
from utils.cli import run_cli
from utils.images import open_image
from utils.pair_scoring import PairScheduler
from utils.prompts import Prompt, ReferenceFrame
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.score_head import load_head
from utils.synthetic import write_custom, write_perseg

DISTRIBUTED = {  # script -> its arguments but the device (never read: the process stops when it joins)
    "sam2_permis": ["--dataset_file", "perseg"],
    "sam2_permir_obj_scores": [],
    "search_photos": [],
    "precompute_features_ilias": [],
    "sam2_reranking": [],
    "train_revisitop": ["--dataset_file", "roxford5k"],
}
ONE_PROCESS = {"topk_candidates_ilias": [], "extract_images": [], "extract_candidates": [], "make_demo_data": [],
               "bench": []}


class Joined(Exception):
    """Raised by the mocked process group: the run setup is over."""


@pytest.fixture
def four_gpus_rank_3(monkeypatch):
    """Process 3 of 4 on a node with 4 (mocked) GPUs; records set_device and the process group."""
    calls = []
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "3")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))

    def init_process_group(backend, **kwargs):
        calls.append(("process group", backend))
        raise Joined

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    return calls


def start(script, tmp_path, *device):
    module = importlib.import_module(script)
    args = module.get_args_parser().parse_args([*DISTRIBUTED.get(script, ONE_PROCESS.get(script)), "--output_dir",
                                                str(tmp_path / "out"), *device])
    return module.main(args)


@pytest.mark.parametrize("script", list(DISTRIBUTED))
@pytest.mark.parametrize("device", [["--device", "cuda"], []])
def test_each_process_takes_the_gpu_of_its_local_rank(script, device, four_gpus_rank_3, tmp_path):
    with pytest.raises(Joined):
        start(script, tmp_path, *device)
    assert four_gpus_rank_3 == [("set_device", torch.device("cuda", 3)), ("process group", "nccl")]


@pytest.mark.parametrize("script", list(DISTRIBUTED))
def test_cpu_under_torchrun_stays_on_the_cpu(script, four_gpus_rank_3, tmp_path):
    with pytest.raises(Joined):
        start(script, tmp_path, "--device", "cpu")
    assert four_gpus_rank_3 == [("process group", "gloo")]


@pytest.mark.parametrize("script", list(ONE_PROCESS))
def test_file_steps_refuse_several_processes(script, four_gpus_rank_3, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stopped:
        run_cli(module.main, module.get_args_parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and "runs as one process" in err[0]
    assert four_gpus_rank_3 == []


def test_more_processes_than_gpus_is_one_line(four_gpus_rank_3, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["sam2_permis.py", "--dataset_file", "perseg", "--output_dir", str(tmp_path),
                                      "--device", "cuda"])
    module = importlib.import_module("sam2_permis")
    with pytest.raises(SystemExit) as stopped:
        run_cli(module.main, module.get_args_parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and "local rank 3" in err[0] and "--nproc_per_node 2" in err[0]
    assert four_gpus_rank_3 == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_that_cannot_reach_the_others_is_one_line(tiny_sam2, perseg_root, tmp_path):
    """Process 0 of 2, and process 1 never starts: it waits --dist_timeout, then one line, exit 2,
    and nothing written but the folder's lock."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    cfg, ckpt = tiny_sam2
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "sam2_permis.py"), "--dataset_file", "perseg", "--data_path",
                             str(perseg_root), "--output_dir", str(out), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
                             str(ckpt), "--device", "cpu", "--dist_timeout", "3"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("error: cannot join the other processes") and "--dist_timeout" in err[0]
    assert [p.name for p in out.iterdir()] == [".lock"]


def sam2_args(model, *extra):
    cfg, ckpt = model
    return ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu", *map(str, extra)]


def same_outputs(one, two, names):
    for name in names:
        if name == "metrics.json":  # the numbers; the run record says how many processes ran
            strip = lambda path: {k: v for k, v in json.loads(path.read_text()).items() if k != "run"}
            assert strip(two / name) == strip(one / name)
        else:
            assert (two / name).read_bytes() == (one / name).read_bytes(), name


def masks_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted((folder / "masks").rglob("*.png"))}


@pytest.mark.parametrize("dataset", ["perseg", "permis"])
def test_segmentation_two_processes_equal_one(dataset, tiny_sam2, perseg_root, permirs_root, tmp_path):
    data = perseg_root if dataset == "perseg" else permirs_root
    one, two = run_one_and_two_processes(
        "sam2_permis.py", lambda out: ["--dataset_file", dataset, "--data_path", str(data), "--output_dir", str(out),
                                       "--chunk_size", "1", "--save_masks", *sam2_args(tiny_sam2)], tmp_path)
    same_outputs(one, two, ["metrics.json"])
    assert masks_of(one) and masks_of(two) == masks_of(one)


def test_permir_two_processes_equal_one(tiny_sam2, tmp_path):
    data = write_permirs(tmp_path / "permirs", num_videos=4)
    one, two = run_one_and_two_processes(
        "sam2_permir_obj_scores.py", lambda out: ["--data_path", str(data), "--output_dir", str(out), "--chunk_size",
                                                  "2", *sam2_args(tiny_sam2)], tmp_path)
    same_outputs(one, two, ["scores.npy", "permir_data.pt", "metrics.json"])


def test_search_two_processes_equal_one(tiny_sam2, tiny_dinov2, tmp_path):
    """Photos and videos (each video one unit of work) split across the processes: the same bytes."""
    photos = tmp_path / "photos"
    write_custom(photos, num_objects=2, num_images=7, seed=4, size=(72, 96))
    for k in range(3):
        write_clip(photos / "images" / "clips" / f"{k}.mp4", moving_scenes(8, 72, 96, seed=k))
    one, two = run_one_and_two_processes(
        "search_photos.py", lambda out: ["--data_path", str(photos), "--output_dir", str(out), "--chunk_size", "2",
                                         "--dinov2", str(tiny_dinov2), "--dinov2_resolution", "56", "--shortlist", "5",
                                         "--index_dir", str(out / "index"), *sam2_args(tiny_sam2)], tmp_path)
    same_outputs(one, two, ["rankings.csv", "found.json", "metrics.json"])
    assert masks_of(one) and masks_of(two) == masks_of(one)
    found = json.loads((one / "found.json").read_text())
    assert any(entry["image"].endswith(".mp4") for entries in found.values() for entry in entries)  # videos tracked


def test_training_two_processes_equal_one(tiny_sam2, tmp_path):
    """Data-parallel training: the same loss history and heads as one process; a head trained by
    two processes gives the scores of the one trained by one."""
    data = write_revisitop(tmp_path / "revisitop")
    one, two = run_one_and_two_processes(
        "train_revisitop.py", lambda out: ["--dataset_file", "roxford5k", "--data_path", str(data), "--output_dir",
                                           str(out), "--epochs", "2", "--samples_per_epoch", "5",
                                           "--triplets_per_step", "3", "--num_negatives", "2", "--val_fraction",
                                           "0.4", "--val_anchors", "3", "--val_negatives", "3", "--lr", "1e-2",
                                           *sam2_args(tiny_sam2)], tmp_path)
    history = [json.loads((folder / "metrics.json").read_text())["history"] for folder in (one, two)]
    for epoch_one, epoch_two in zip(*history):
        assert epoch_one.keys() == epoch_two.keys()
        for key in epoch_one:
            assert epoch_two[key] == pytest.approx(epoch_one[key], abs=1e-5), key
    heads = [torch.load(folder / "head_last.pt", weights_only=True)["head"] for folder in (one, two)]
    start = torch.load(tiny_sam2[1], weights_only=True)["model"]
    assert any(not torch.equal(heads[0][name], start[name]) for name in heads[0])  # it trained
    for name in heads[0]:
        torch.testing.assert_close(heads[1][name], heads[0][name], atol=1e-5, rtol=0)
    scores = []
    for folder in (one, two):
        model = build_sam2_model(str(tiny_sam2[0]), str(tiny_sam2[1]))
        load_head(model, str(folder / "head_last.pt"), "iou", "box")
        images = sorted((data / "roxford5k" / "jpg").glob("*.jpg"))[:4]
        references = {"a": [ReferenceFrame(str(images[0]), Prompt(box=(5, 5, 60, 50)))]}
        scheduler = PairScheduler(PseudoVideo(model), open_image, 1)
        scores.append(scheduler.scores([("a", str(p)) for p in images[1:]], references, "iou"))
    torch.testing.assert_close(scores[1], scores[0], atol=1e-5, rtol=0)


def test_a_job_resumes_with_another_number_of_processes(tiny_sam2, tmp_path):
    """Parts belong to chunks, not to processes: parts written by 2 processes are reused by 1, and
    the other way round, and the outputs are those of an uninterrupted run."""
    data = tmp_path / "perseg"
    write_perseg(data, num_objects=4, images_per_object=3, seed=2, size=(48, 64))
    argv = lambda out: ["--dataset_file", "perseg", "--data_path", str(data), "--output_dir", str(out), "--chunk_size",
                        "1", "--save_masks", *sam2_args(tiny_sam2)]
    one, two = run_one_and_two_processes("sam2_permis.py", argv, tmp_path)
    for folder in (one, two):  # as if killed: two of the four parts and the results lost
        for name in ("chunk_00001.npz", "chunk_00003.npz"):
            (folder / "parts" / name).unlink()
        (folder / "metrics.json").unlink()
    kept = {folder: (folder / "parts" / "chunk_00000.npz").stat().st_mtime_ns for folder in (one, two)}
    for folder, processes in ((one, 2), (two, 1)):  # resumed with the other number of processes
        launch("sam2_permis.py", argv(folder), processes)
        assert (folder / "parts" / "chunk_00000.npz").stat().st_mtime_ns == kept[folder]  # not run again
    uninterrupted = tmp_path / "uninterrupted"
    launch("sam2_permis.py", argv(uninterrupted))
    for folder in (one, two):
        same_outputs(uninterrupted, folder, ["metrics.json"])
        assert masks_of(folder) == masks_of(uninterrupted)
        assert all((folder / "parts" / name).read_bytes() == (uninterrupted / "parts" / name).read_bytes()
                   for name in ("chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz", "chunk_00003.npz"))


def test_every_process_has_a_share_by_default(tiny_sam2, tmp_path):
    """Default chunk sizes follow the work, not one size for all: under torchrun with 4 processes
    and no --chunk_size, every rank scores pairs and none more than twice the mean (PerSeg of 8
    objects; a folder of 12 photos)."""
    perseg = tmp_path / "perseg"
    write_perseg(perseg, num_objects=8, images_per_object=3, seed=2, size=(72, 96))
    photos = tmp_path / "photos"
    write_custom(photos, num_objects=1, num_images=12, seed=2, size=(48, 64))
    for script, argv in (("sam2_permis.py", ["--dataset_file", "perseg", "--data_path", str(perseg)]),
                         ("search_photos.py", ["--data_path", str(photos)])):
        out = tmp_path / script
        launch(script, [*argv, "--output_dir", str(out), *sam2_args(tiny_sam2)], processes=4)
        shares = json.loads((out / "metrics.json").read_text())["run"]["pairs_per_process"]
        assert len(shares) == 4 and min(shares) > 0 and max(shares) <= 2 * sum(shares) / 4, (script, shares)
