"""sam2_permis.py end to end on generated PerSeg and PerMIRS folders with a shrunk random SAM2."""
import json

import numpy as np
import pytest
from PIL import Image

import sam2_permis
from conftest import run_script
from utils.loaders.common import read_mask
from utils.metrics import boundary_intersection_union, intersection_union, pdm_crop_box, ratio


def args_for(tiny_sam2, data_path, output_dir, *extra):
    cfg, ckpt = tiny_sam2
    return ["--data_path", str(data_path), "--output_dir", str(output_dir), "--sam2_cfg", str(cfg),
            "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--pair_batch_size", "2", *map(str, extra)]


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
    metrics = run_main(["--dataset_file", "perseg", "--save_masks", "--visualize", "1",
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
    assert sorted(p.name for p in (out / "vis").rglob("*.png")) == ["01.png", "01.png"]  # 1 per object
    run = metrics["run"]  # the record of what made the numbers
    assert run["settings"]["dataset_file"] == "perseg" and run["settings"]["shots"] == 1
    assert {"torch", "sam2", "numpy"} <= set(run["versions"]) and "git_commit" in run


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


def test_shots_are_the_first_reference_frames(tiny_sam2, perseg_root, tmp_path, monkeypatch):
    """With --shots 2 each object's pseudo-video holds its images 00 and 01 as references (their
    masks as prompts) and the others as targets."""
    from utils.pseudo_video import PseudoVideo

    built = []
    encode_reference = PseudoVideo.encode_reference

    def recording(self, frames, prompts):
        built.append(([f.image_id for f in frames], prompts))
        return encode_reference(self, frames, prompts)

    monkeypatch.setattr(PseudoVideo, "encode_reference", recording)
    two = run_main(["--dataset_file", "perseg", "--shots", "2", *args_for(tiny_sam2, perseg_root, tmp_path / "b")])
    assert all(m["targets"] == 2 for m in two["per_object"].values())
    assert sorted(ids for ids, _ in built) == [[str(perseg_root / "Images" / o / f"{i}.jpg") for i in ("00", "01")]
                                               for o in ("object_0", "object_1")]
    for ids, prompts in built:
        for image_id, prompt in zip(ids, prompts):
            assert np.array_equal(prompt.mask, read_mask(image_id.replace("Images", "Annotations")[:-4] + ".png"))


def test_runs_are_deterministic(tiny_sam2, perseg_root, tmp_path):
    first = run_main(["--dataset_file", "perseg", *args_for(tiny_sam2, perseg_root, tmp_path / "a")])
    second = run_main(["--dataset_file", "perseg", *args_for(tiny_sam2, perseg_root, tmp_path / "b")])
    first.pop("run"), second.pop("run")  # the records name their own output folders
    assert first == second


def test_cli_prints_table(tiny_sam2, perseg_root, tmp_path):
    result = run_script("sam2_permis.py", "--dataset_file", "perseg",
                        *args_for(tiny_sam2, perseg_root, tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "object_0" in result.stdout and "perseg (all)" in result.stdout
    assert (tmp_path / "cli" / "metrics.json").is_file()
