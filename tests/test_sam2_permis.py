"""sam2_permis.py end to end on generated PerSeg and PerMIRS folders with a shrunk random SAM2."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam2_permis
from conftest import run_script
from utils.images import read_mask
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
    """PDM's inputs (the default): every frame cut and resized to 512 x 512 as PDM does, the
    prediction made and saved there, and measured against the ground truth cut the same way."""
    out = tmp_path / "run"
    metrics = run_main(["--dataset_file", "permis", "--save_masks", *args_for(tiny_sam2, permirs_root, out)])
    assert "skipped 1 targets" in capsys.readouterr().out
    assert metrics["skipped_targets"] == 1 and metrics["targets"] == 2  # video_2's target is tiny
    assert metrics["permirs_frames"] == "pdm" and "miou_full_frame" not in metrics
    inter = union = 0
    for video in ("video_0", "video_1"):
        gt = next(iter(np.load(permirs_root / video / "masks.npz.npy", allow_pickle=True)[1].values()))
        pred = np.asarray(Image.open(out / "masks" / video / "1.png")) > 0
        assert pred.shape == (512, 512)
        gt_crop = np.asarray(Image.fromarray(gt.astype(np.uint8)).crop(pdm_crop_box(gt)).resize((512, 512))) > 0
        i, u = intersection_union(pred, gt_crop)
        inter, union = inter + i, union + u
    assert metrics["miou"] == pytest.approx(100 * inter / union, abs=1e-9)  # global, not a mean


def test_permis_on_whole_frames(tiny_sam2, permirs_root, tmp_path):
    """--permirs_frames full: SAM2 sees whole frames; the protocol's IoU is still taken on PDM's
    crop of prediction and ground truth (the same offsets), the whole-frame IoU kept beside it."""
    out = tmp_path / "run"
    metrics = run_main(["--dataset_file", "permis", "--permirs_frames", "full", "--save_masks",
                        *args_for(tiny_sam2, permirs_root, out)])
    assert metrics["permirs_frames"] == "full"
    inter = union = full_inter = full_union = 0
    for video in ("video_0", "video_1"):
        gt = next(iter(np.load(permirs_root / video / "masks.npz.npy", allow_pickle=True)[1].values()))
        pred = np.asarray(Image.open(out / "masks" / video / "1.png")) > 0
        box = pdm_crop_box(gt)
        crops = [np.asarray(Image.fromarray(m.astype(np.uint8)).crop(box).resize((512, 512))) > 0 for m in (pred, gt)]
        i, u = intersection_union(*crops)
        inter, union = inter + i, union + u
        i, u = intersection_union(pred, gt)
        full_inter, full_union = full_inter + i, full_union + u
    assert metrics["miou"] == pytest.approx(100 * inter / union, abs=1e-9)
    assert metrics["miou_full_frame"] == pytest.approx(100 * full_inter / full_union, abs=1e-9)


def write_border_videos(root):
    """PerMIRS videos whose frames are wider or taller than square, with the object against the
    left or the right border (PDM's crop then shifts to contain it)."""
    rng = np.random.default_rng(12)
    for v, (height, width, side) in enumerate([(72, 160, "left"), (72, 160, "right"), (150, 64, "left")]):
        video, masks = root / f"video_{v}", []
        for f in range(3):
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            mask = np.zeros((height, width), bool)
            columns = slice(0, 20) if side == "left" else slice(width - 20, width)
            mask[20 + 4 * f:60, columns] = True
            pixels[mask] = (250, 30, 30)
            video.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(video / f"{f}.jpg", quality=95)
            masks.append({3: mask})
        np.save(video / "masks.npz.npy", np.array(masks, dtype=object), allow_pickle=True)
    return root


def test_sam2_is_given_pdm_crops(tiny_sam2, tmp_path, monkeypatch):
    """The engine gets 512 x 512 frames whose pixels are PIL's crop-then-resize of the original
    (PDM's order), the crop containing the object at the border; the reference prompt is the mask
    cut the same way."""
    import utils.feed
    from utils.pseudo_video import PseudoVideo

    root = write_border_videos(tmp_path / "permirs")
    given, prompts = {}, []
    prepare = utils.feed.prepare_frame

    def recording(image, image_size, image_id=None):
        given[image_id] = np.asarray(image)
        return prepare(image, image_size, image_id)

    encode_reference = PseudoVideo.encode_reference
    monkeypatch.setattr(utils.feed, "prepare_frame", recording)
    monkeypatch.setattr(PseudoVideo, "encode_reference", lambda self, frames, p: prompts.append(
        (frames[0].image_id, p[0].mask)) or encode_reference(self, frames, p))
    run_main(["--dataset_file", "permis", *args_for(tiny_sam2, root, tmp_path / "out")])
    assert sorted(given) == sorted(str(root / f"video_{v}" / f"{f}.jpg") for v in range(3) for f in (0, 1))
    for image_id, pixels in given.items():
        path = Path(image_id)
        mask = next(iter(np.load(path.parent / "masks.npz.npy", allow_pickle=True)[int(path.stem)].values()))
        box = pdm_crop_box(mask)
        assert box[0] == 0 if mask[:, 0].any() else box[2] == mask.shape[1]  # shifted to hold the object
        want = Image.open(path).crop(box).resize((512, 512)).convert("RGB")
        assert pixels.shape == (512, 512, 3) and np.array_equal(pixels, np.asarray(want))
    assert sorted(image_id for image_id, _ in prompts) == [str(root / f"video_{v}" / "0.jpg") for v in range(3)]
    for image_id, prompt in prompts:
        mask = next(iter(np.load(Path(image_id).parent / "masks.npz.npy", allow_pickle=True)[0].values()))
        want = Image.fromarray(mask.astype(np.uint8)).crop(pdm_crop_box(mask)).resize((512, 512))
        assert np.array_equal(prompt, np.asarray(want) > 0)


def test_a_perfect_prediction_scores_100(permirs_root, perseg_root, tmp_path):
    """Fed its own ground truth (PDM's crop, or the whole image for PerSeg), the protocol gives
    an IoU and a bIoU of 100: predictions and ground truth are measured in the same frame."""
    from utils.benchmarks import BENCHMARKS
    from utils.io import Parts
    from utils.pair_scoring import score_in_parts

    class Oracle:
        """A SAM2 run whose scheduler predicts each target's ground truth."""
        run = type("Run", (), {"is_main": True})()

        def __init__(self, targets):
            self.targets = targets

        def score_in_parts(self, parts, chunks, references, open_image, **kwargs):
            score_in_parts(self, parts, chunks, range(len(chunks)), references, **kwargs)

        def batches(self, pairs, references, with_masks=False, desc=None, groups=None, keep_going=()):
            for position, (name, image) in enumerate(pairs):
                gt = torch.from_numpy(self.targets[(name, image)].astype(np.float32) * 2 - 1)
                yield [position], type("Result", (), {"iou": torch.ones(1), "object_score_logit": torch.ones(1),
                                                     "mask_logit": lambda self, row, gt=gt: gt})()

    for dataset, root, frames in (("permis", permirs_root, "pdm"), ("permis", permirs_root, "full"),
                                  ("perseg", perseg_root, "pdm")):
        episodes, skipped = BENCHMARKS[dataset].episodes(root, 1, "00", frames)
        targets = {(e.name, str(t.image_path)): t.mask for e in episodes for t in e.targets}
        parts = Parts(tmp_path / f"{dataset}_{frames}", {})
        chunks = [episodes]
        sam2_permis.segment(Oracle(targets), parts, chunks, tmp_path, False, 0)
        metrics, _ = sam2_permis.benchmark_metrics(dataset, sam2_permis.counts_per_object(parts, chunks), skipped, 1,
                                                   frames)
        assert metrics["miou"] == pytest.approx(100) and metrics["biou"] == pytest.approx(100), (dataset, frames)


def test_perseg_masks_are_read_by_persam_eval_miou(tiny_sam2, perseg_root, tmp_path):
    """--save_masks writes one mask per image of an object, the reference's too (its prompt), named
    as its annotation: PerSAM's `eval_miou.py` pairs `sorted(rglob("*.png"))` of the prediction
    folder with the sorted annotations and skips the reference by name; its mIoU (the mean over
    objects of sum(I) / sum(U)) is this run's."""
    out = tmp_path / "run"
    metrics = run_main(["--dataset_file", "perseg", "--save_masks", *args_for(tiny_sam2, perseg_root, out)])
    ious = []
    for gt_folder in sorted((perseg_root / "Annotations").iterdir()):
        gt_images = sorted(gt_folder.rglob("*.png"))
        pred_images = sorted((out / "masks" / gt_folder.name).rglob("*.png"))
        assert [p.name for p in pred_images] == [p.name for p in gt_images]
        inter = union = 0
        for gt_path, pred_path in zip(gt_images, pred_images):
            if "00" in gt_path.name:  # eval_miou.py: `if args.ref_idx in gt_img: continue`
                assert np.array_equal(read_mask(pred_path), read_mask(gt_path))  # the prompt
                continue
            i, u = intersection_union(np.asarray(Image.open(pred_path).convert("L")) > 0,
                                      np.asarray(Image.open(gt_path).convert("L")) > 0)
            inter, union = inter + i, union + u
        ious.append(inter / (union + 1e-10))
    assert metrics["miou"] == pytest.approx(100 * np.mean(ious), abs=1e-6)


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
