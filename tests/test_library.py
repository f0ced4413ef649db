"""A real library: phone formats (HEIC stored turned, AVIF, WebP) searched as the official predictor
segments their decoded pixels; references of any format; point and box-with-point prompts, one
shot and k shots, equal to the official `add_new_points_or_box` (target masks and scores, and the
reference masks written); the damaged files of a library skipped, named and listed while the
rest ranks as without them; reduced decoding at the scale it says, and never for benchmarks."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor

import search_photos
from conftest import REPO
from media import save_photo
from tiny_sam2 import TINY_CFG, TINY_OVERRIDES
from utils.images import decode, open_image, read_mask
from utils.loaders.custom import load_library
from utils.loaders.perseg import load_perseg
from utils.synthetic import render_object, render_scene, write_custom, write_jpeg, write_perseg


def search(model, data, output_dir, *extra):
    cfg, ckpt = model
    return search_photos.main(search_photos.get_args_parser().parse_args(
        ["--data_path", str(data), "--output_dir", str(output_dir), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
         str(ckpt), "--device", "cpu", *map(str, extra)]))


def official_target(ckpt, shots: list[tuple[Image.Image, object]], target: Image.Image, folder):
    """The official SAM2VideoPredictor on the video [shots..., target] given these decoded pixels
    (written losslessly under .jpg names, which sam2 lists; PIL reads them by content): the
    target's mask, the IoUs and object-score logit of its decoder call, and each shot's mask as
    returned when its prompt is added (boxes and points relative to their photo's own size)."""
    predictor = build_sam2_video_predictor(TINY_CFG, device="cpu", hydra_overrides_extra=TINY_OVERRIDES)
    predictor.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir(parents=True)
    for j, image in enumerate([image for image, _ in shots] + [target]):
        image.save(video / f"{j}.jpg", format="PNG")
    calls, heads = [], predictor._forward_sam_heads
    predictor._forward_sam_heads = lambda *a, **k: calls.append(heads(*a, **k)) or calls[-1]
    state = predictor.init_state(str(video))
    reference_masks = []
    for j, (image, prompt) in enumerate(shots):
        if prompt.mask is not None:
            predictor.add_new_mask(state, j, 1, prompt.mask)
            reference_masks.append(prompt.mask)
            continue
        size = np.array([image.width, image.height], np.float32)
        points = np.array(prompt.points, np.float32).reshape(-1, 2) / size if prompt.points else None
        _, _, mask = predictor.add_new_points_or_box(
            state, j, 1, points=points, labels=np.array(prompt.labels, np.int32) if prompt.points else None,
            box=np.array(prompt.box, np.float32) / np.tile(size, 2) if prompt.box is not None else None,
            normalize_coords=False)
        # returned at the video's size (the target's): the same logits at the shot's own size
        low_res = state["temp_output_dict_per_obj"][0]["cond_frame_outputs"][j]["pred_masks"]
        reference_masks.append((torch.nn.functional.interpolate(low_res, size=(image.height, image.width),
                                                                 mode="bilinear", align_corners=False)[0, 0] > 0).numpy())
    for _, _, masks in predictor.propagate_in_video(state):
        last = masks
    del predictor._forward_sam_heads
    _, _, ious, *_, object_score_logits = calls[-1]
    return (last[0, 0] > 0).numpy(), ious, object_score_logits[0, 0].item(), reference_masks


@pytest.fixture(scope="module")
def phone_library(tmp_path_factory):
    """A HEIC stored turned (EXIF orientation 6, shown upright), an AVIF and a WebP, beside a JPEG;
    references: a WebP with a points prompt, and a HEIC with a box and a point (k = 2 shots)."""
    root = tmp_path_factory.mktemp("phone_library")
    rng = np.random.default_rng(5)
    obj = render_object(11)
    scenes = [render_scene(rng, obj, 96, 128, scale=0.45) for _ in range(6)]
    save_photo(root / "images" / "phone" / "IMG_0001.HEIC", scenes[0][0].transpose(Image.Transpose.ROTATE_90),
               "HEIF", orientation=6)
    save_photo(root / "images" / "web.avif", scenes[1][0], "AVIF")
    save_photo(root / "images" / "web.webp", scenes[2][0], "WEBP")
    write_jpeg(root / "images" / "camera.jpg", scenes[3][0])
    (image, mask), (second, second_mask) = scenes[4], scenes[5]
    ys, xs = np.nonzero(mask)
    save_photo(root / "references" / "toy.webp", image, "WEBP")
    (root / "references" / "toy.txt").write_text(f"{xs.mean():.1f} {ys.mean():.1f} 1\n2 2 0\n")
    save_photo(root / "references" / "toy_2.heic", second, "HEIF")
    ys, xs = np.nonzero(second_mask)
    (root / "references" / "toy_2.txt").write_text(
        f"{xs.min()} {ys.min()} {xs.max() + 1} {ys.max() + 1}\n{xs.mean():.1f} {ys.mean():.1f} 1\n")
    return root


def test_phone_formats_are_searched_as_the_official_predictor_segments_them(phone_library, tiny_sam2, tmp_path):
    metrics = search(tiny_sam2, phone_library, tmp_path)
    library = load_library(phone_library)
    assert library.photos == ["images/camera.jpg", "images/phone/IMG_0001.HEIC", "images/web.avif", "images/web.webp"]
    assert metrics["photos"] == 4 and metrics["skipped"] == []
    heic = library.open("images/phone/IMG_0001.HEIC")
    assert heic.size == (128, 96)  # stored turned, read upright
    shots = [(library.open(s.image), s.prompt) for s in library.objects["toy"]]
    assert [s.prompt.kind for s in library.objects["toy"]] == ["points", "box+points"]
    found = {entry["image"]: entry for entry in json.loads((tmp_path / "found.json").read_text())["toy"]}
    with open(tmp_path / "rankings.csv") as f:
        scores = {row["image"]: float(row["score"]) for row in csv.DictReader(f)}
    for photo in library.photos:
        want_mask, want_ious, want_object, want_references = official_target(tiny_sam2[1], shots, library.open(photo),
                                                                              tmp_path)
        assert scores[photo] == pytest.approx(want_ious.max().item(), abs=1e-4)
        assert (photo in found) == (want_object > 0)
        if photo in found:
            saved = read_mask(tmp_path / found[photo]["mask"])
            assert saved.shape == want_mask.shape and (saved == want_mask).mean() >= 0.999
            assert found[photo]["object_score_logit"] == pytest.approx(want_object, abs=1e-4)
    for shot, want in zip(library.objects["toy"], want_references):  # the reference masks written: the official's
        written = read_mask(tmp_path / "masks" / "toy" / "references" / f"{shot.image.split('/')[-1].split('.')[0]}.png")
        assert written.shape == want.shape and (written == want).mean() >= 0.999 and written.any()
    assert found["images/phone/IMG_0001.HEIC"]["mask"] == "masks/toy/phone/IMG_0001.png"


def test_references_only_writes_the_reference_masks_and_stops(phone_library, tiny_sam2, tmp_path):
    metrics = search(tiny_sam2, phone_library, tmp_path, "--references_only")
    assert metrics["references"] == {"toy": 2}
    assert sorted(p.name for p in (tmp_path / "masks" / "toy" / "references").iterdir()) == ["toy.png", "toy_2.png"]
    assert not (tmp_path / "rankings.csv").exists() and not (tmp_path / "parts").exists()


def damage(root):
    """A truncated JPEG, a zero-byte MP4, a text file named .heic, and a camera RAW file."""
    photo = root / "images" / "indoor" / "000.jpg"
    photo.write_bytes(photo.read_bytes()[:600])
    (root / "images" / "clip.mp4").write_bytes(b"")
    (root / "images" / "notes.heic").write_text("shopping list: milk, eggs")
    (root / "images" / "DSC_0042.NEF").write_bytes(b"MM\x00*raw sensor data")
    (root / "images" / "IMG_0001.AAE").write_text("<plist/>")  # an edit sidecar: not a photo, left alone


def test_damaged_files_are_skipped_named_and_listed(tiny_sam2, tmp_path):
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    write_custom(clean, num_objects=2, num_images=5, size=(48, 64))
    shutil.copytree(clean, damaged)
    damage(damaged)
    cfg, ckpt = tiny_sam2
    run = lambda data, out: subprocess.run(
        [sys.executable, str(REPO / "search_photos.py"), "--data_path", str(data), "--output_dir", str(out),
         "--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu"], capture_output=True, text=True,
        timeout=600)
    result = run(damaged, tmp_path / "out_damaged")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    named = ("images/indoor/000.jpg", "images/clip.mp4", "images/notes.heic", "images/DSC_0042.NEF")
    assert len(lines) == 4 and all(line.startswith("warning: skipped: ") for line in lines)
    assert sorted(next(n for n in named if n in line) for line in lines) == sorted(named)
    assert "camera RAW" in next(line for line in lines if "NEF" in line)
    metrics = json.loads((tmp_path / "out_damaged" / "metrics.json").read_text())
    assert sorted(s["file"] for s in metrics["skipped"]) == sorted(named)
    assert run(clean, tmp_path / "out_clean").returncode == 0
    read = lambda out: [row for row in csv.DictReader(open(out / "rankings.csv")) if row["image"] != named[0]]
    clean_rows = read(tmp_path / "out_clean")
    for row in clean_rows:  # the damaged run ranks the rest as the clean one does
        row["rank"] = None
    damaged_rows = read(tmp_path / "out_damaged")
    for row in damaged_rows:
        row["rank"] = None
    assert damaged_rows == clean_rows


def test_reduced_decoding_picks_the_scale_it_says(tmp_path):
    """A 1,600 x 1,200 JPEG asked for a 256 side decodes at 1/4 (400 x 300, both >= 256), for 512 at
    1/2, for 700 whole (1/2 would give a 600 side); an EXIF-turned one by its upright sides; a PNG whole;
    the photo's own size is kept."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    image.save(tmp_path / "photo.jpg", quality=90)
    image.save(tmp_path / "photo.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.jpg", quality=90, exif=exif.tobytes())
    for name, side, size in (("photo.jpg", 256, (400, 300)), ("photo.jpg", 512, (800, 600)),
                             ("photo.jpg", 600, (800, 600)), ("photo.jpg", 700, (1600, 1200)),
                             ("photo.jpg", None, (1600, 1200)), ("turned.jpg", 256, (300, 400)),
                             ("photo.png", 256, (1600, 1200))):
        decoded = decode(tmp_path / name, exif=True, min_side=side)
        assert decoded.image.size == size and min(size) >= (side or 0), (name, side)
        assert (decoded.width, decoded.height) == ((1200, 1600) if name == "turned.jpg" else (1600, 1200))
    full = np.asarray(open_image(tmp_path / "photo.jpg"))
    assert np.array_equal(np.asarray(decode(tmp_path / "photo.jpg", min_side=None).image), full)


def test_benchmarks_decode_whole(tmp_path, monkeypatch):
    """A benchmark's images never go through the reduced decoder: PerSeg's loader reads them whole."""
    import utils.images

    write_perseg(tmp_path, num_objects=1, images_per_object=3, size=(600, 800))
    asked = []
    decode_at = utils.images.decode
    monkeypatch.setattr(utils.images, "decode", lambda *a, **k: asked.append(k.get("min_side")) or decode_at(*a, **k))
    episode = load_perseg(tmp_path)[0]
    for sample in episode.references + episode.targets:
        assert sample.load_image().size == (sample.mask.shape[1], sample.mask.shape[0])
    assert asked and set(asked) == {None}


@pytest.mark.parametrize("shortlist", [False, True], ids=["all_pairs", "dinov2_shortlist"])
def test_a_photo_removed_during_the_search_is_skipped_and_listed(shortlist, tiny_sam2, tiny_dinov2, tmp_path,
                                                                 monkeypatch, capsys):
    data = tmp_path / "photos"
    write_custom(data, num_objects=1, num_images=4, size=(48, 64))
    removed = []

    def listed_then_removed(root):  # the file goes between the listing and its reading
        library = load_library(root)
        removed.append(library.photos[1])
        (library.root / removed[0]).unlink()
        return library

    monkeypatch.setattr(search_photos, "load_library", listed_then_removed)
    flags = ["--dinov2", tiny_dinov2, "--dinov2_resolution", 56, "--shortlist", 4] if shortlist else []
    metrics = search(tiny_sam2, data, tmp_path / "out", *flags)
    assert [s["file"] for s in metrics["skipped"]] == removed
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped: ") and removed[0] in warnings[0]
    ranked = [row["image"] for row in csv.DictReader(open(tmp_path / "out" / "rankings.csv"))]
    assert removed[0] not in ranked and len(ranked) == 3
