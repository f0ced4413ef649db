"""sam2_permis.py end to end on generated PerSeg and PerMIRS folders with a shrunk random SAM2."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

import sam2_permis
from conftest import run_script, write_permirs
from utils.errors import run_cli
from utils.loaders.common import read_mask
from utils.metrics import boundary_intersection_union, intersection_union, pdm_crop_box, ratio
from utils.synthetic import write_perseg


def args_for(tiny_sam2, data_path, output_dir, *extra):
    cfg, ckpt = tiny_sam2
    return ["--data_path", str(data_path), "--output_dir", str(output_dir), "--sam2_cfg", str(cfg),
            "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--batch_size", "2", *map(str, extra)]


def run_main(argv):
    return sam2_permis.main(sam2_permis.get_args_parser().parse_args(argv))


def counts_from_saved_masks(output_dir, pairs):
    """(I, U, boundary I, boundary U) per object, recomputed from the PNGs the run saved."""
    counts = {}
    for name, stem, gt in pairs:
        saved = np.asarray(Image.open(output_dir / "masks" / name / f"{stem}.png"))
        assert saved.shape == gt.shape and set(np.unique(saved)) <= {0, 255}
        pred = saved > 0
        acc = counts.setdefault(name, np.zeros(4, np.int64))
        acc += [*intersection_union(pred, gt), *boundary_intersection_union(pred, gt)]
    return counts


def test_perseg_end_to_end(tiny_sam2, perseg_root, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = run_main(["--dataset_file", "perseg", "--save_masks", "--visualize",
                        *args_for(tiny_sam2, perseg_root, out)])
    printed = capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    pairs = [(obj.name, p.stem, read_mask(perseg_root / "Annotations" / obj.name / f"{p.stem}.png"))
             for obj in sorted((perseg_root / "Images").iterdir())
             for p in sorted(obj.glob("*.jpg")) if p.stem != "00"]
    counts = counts_from_saved_masks(out, pairs)
    miou = 100 * np.mean([ratio(c[0], c[1]) for c in counts.values()])
    biou = 100 * np.mean([ratio(c[2], c[3]) for c in counts.values()])
    assert metrics["miou"] == pytest.approx(miou, abs=1e-9)
    assert metrics["biou"] == pytest.approx(biou, abs=1e-9)
    assert f"{miou:.2f}" in printed and f"{biou:.2f}" in printed
    assert set(metrics["per_object"]) == {"object_0", "object_1"}
    assert all(m["targets"] == 3 for m in metrics["per_object"].values())
    assert 0 < miou < 100  # a real segmentation, neither empty nor the whole image
    vis = Image.open(out / "vis" / "object_0" / "01.png")
    assert vis.size == Image.open(perseg_root / "Images" / "object_0" / "01.jpg").size


def test_permis_end_to_end(tiny_sam2, permirs_root, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = run_main(["--dataset_file", "permis", "--save_masks", *args_for(tiny_sam2, permirs_root, out)])
    assert "skipped 1 targets" in capsys.readouterr().out
    assert metrics["skipped_targets"] == 1 and metrics["targets"] == 2  # video_2's target is tiny
    inter = union = full_inter = full_union = 0
    for video in ("video_0", "video_1"):
        gt = next(iter(np.load(permirs_root / video / "masks.npz.npy", allow_pickle=True)[1].values()))
        pred = np.asarray(Image.open(out / "masks" / video / "1.png")) > 0
        # PDM measures both on the 512 x 512 crop of the ground truth's square (same offsets)
        box = pdm_crop_box(gt)
        crops = [np.asarray(Image.fromarray(m.astype(np.uint8)).crop(box).resize((512, 512))) > 0 for m in (pred, gt)]
        i, u = intersection_union(*crops)
        inter, union = inter + i, union + u
        i, u = intersection_union(pred, gt)
        full_inter, full_union = full_inter + i, full_union + u
    assert metrics["miou"] == pytest.approx(100 * inter / union, abs=1e-9)  # global, not a mean
    assert metrics["miou_full_frame"] == pytest.approx(100 * full_inter / full_union, abs=1e-9)


def test_shots_use_more_references(tiny_sam2, perseg_root, tmp_path):
    one = run_main(["--dataset_file", "perseg", *args_for(tiny_sam2, perseg_root, tmp_path / "a")])
    two = run_main(["--dataset_file", "perseg", "--shots", "2", *args_for(tiny_sam2, perseg_root, tmp_path / "b")])
    assert all(m["targets"] == 2 for m in two["per_object"].values())
    assert one["per_object"]["object_0"]["iou"] != two["per_object"]["object_0"]["iou"]


def test_runs_are_deterministic(tiny_sam2, perseg_root, tmp_path):
    first = run_main(["--dataset_file", "perseg", *args_for(tiny_sam2, perseg_root, tmp_path / "a")])
    second = run_main(["--dataset_file", "perseg", *args_for(tiny_sam2, perseg_root, tmp_path / "b")])
    assert first == second


def test_cli_prints_table(tiny_sam2, perseg_root, tmp_path):
    result = run_script("sam2_permis.py", "--dataset_file", "perseg",
                        *args_for(tiny_sam2, perseg_root, tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "object_0" in result.stdout and "perseg (all)" in result.stdout
    assert (tmp_path / "cli" / "metrics.json").is_file()


def break_reference(root):
    (root / "Images" / "object_0" / "00.jpg").unlink()


def resize_mask(root):
    Image.new("L", (10, 10)).save(root / "Annotations" / "object_0" / "01.png")


def empty_reference_mask(root):
    Image.new("L", Image.open(root / "Images" / "object_0" / "00.jpg").size).save(
        root / "Annotations" / "object_0" / "00.png")


def truncate_image(root):
    path = root / "Images" / "object_1" / "02.jpg"
    path.write_bytes(path.read_bytes()[:200])


BAD_PERSEG = {  # case -> (change to a fresh PerSeg copy, extra flags, text the error names)
    "missing data folder": (None, ["--data_path", "does/not/exist"], "does/not/exist"),
    "no reference image": (break_reference, [], "object_0"),
    "mask of another size": (resize_mask, [], "01.png"),
    "empty reference mask": (empty_reference_mask, [], "00.png"),
    "unreadable image": (truncate_image, [], "02.jpg"),
    "unknown dataset": (None, ["--dataset_file", "coco"], "--dataset_file"),
    "missing checkpoint": (None, ["--sam2_checkpoint", "checkpoints/nope.pt"], "nope.pt"),
    "shots too large": (None, ["--shots", "4"], "--shots"),
    "not a SAM2 yaml": (None, ["--sam2_cfg", "pytest.ini"], "pytest.ini"),
}


@pytest.mark.parametrize("case", list(BAD_PERSEG))
def test_bad_input_one_line(case, tiny_sam2, tmp_path, capsys, monkeypatch):
    change, extra, named = BAD_PERSEG[case]
    root = tmp_path / "perseg"
    write_perseg(root, num_objects=2, images_per_object=4, seed=1, size=(72, 96))
    if change:
        change(root)
    if case == "not a SAM2 yaml":
        (tmp_path / "pytest.ini").write_text("[pytest]\n")
        monkeypatch.chdir(tmp_path)
    argv = ["sam2_permis.py", "--dataset_file", "perseg",
            *args_for(tiny_sam2, root, tmp_path / "out"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sam2_permis.main, sam2_permis.get_args_parser())
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and named in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_permirs_folders(tiny_sam2, tmp_path, capsys, monkeypatch):
    cases = {
        "missing frame": (lambda v: (v / "2.jpg").unlink(), "2.jpg"),
        "missing masks": (lambda v: (v / "masks.npz.npy").unlink(), "masks.npz.npy"),
        "foreign masks": (lambda v: np.save(v / "masks.npz.npy", np.zeros(3)), "masks.npz.npy"),
    }
    for i, (change, named) in enumerate(cases.values()):
        root = write_permirs(tmp_path / f"permirs{i}", num_videos=2)
        change(root / "video_1")
        monkeypatch.setattr(sys, "argv", ["sam2_permis.py", "--dataset_file", "permis",
                                          *args_for(tiny_sam2, root, tmp_path / "out")])
        with pytest.raises(SystemExit):
            run_cli(sam2_permis.main, sam2_permis.get_args_parser())
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "video_1" in err
