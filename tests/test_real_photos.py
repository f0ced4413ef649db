"""Images as users have them. Each case either runs, read the way the official tools read it (the
README's error table says which), or stops with one line naming the file; never a traceback,
never a warning storm, never a silently skipped image."""
import io
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import sam2_permis
import search_photos
from utils.cli import run_cli
from utils.images import read_mask
from utils.synthetic import write_custom, write_perseg


def exif_rotated(root):
    """01.jpg stored turned a quarter left with EXIF orientation 6; its mask drawn on the view."""
    path = root / "Images/object_0/01.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())


def convert(name, mode, suffix=".jpg"):
    def change(root):
        path = root / "Images" / name
        image = Image.open(path)
        path.unlink()
        image.convert(mode).save(path.with_suffix(suffix))
    return change


def mask_16bit(root):
    path = root / "Annotations/object_0/02.png"
    ones = (np.asarray(Image.open(path)) > 0).astype(np.uint16)  # 0/1 at 16 bits: 8-bit readers see 0
    Image.fromarray(ones).save(path)
    assert Image.open(path).mode.startswith("I")


def mask_as_jpeg(root):
    path = root / "Annotations/object_1/01.png"
    buf = io.BytesIO()
    Image.open(path).save(buf, "JPEG", quality=75)  # soft edges, under its .png name
    path.write_bytes(buf.getvalue())


def tiny_image(root):
    for folder, suffix, resample in (("Images", ".jpg", Image.BILINEAR), ("Annotations", ".png", Image.NEAREST)):
        path = root / folder / f"object_1/02{suffix}"
        Image.open(path).resize((40, 30), resample).save(path)


def huge_photo(root):
    """A 12,000 x 9,000 photo (108 Mpixel: PIL warns of a decompression bomb above 89 Mpixel)."""
    image = Image.new("RGB", (12000, 9000), (30, 90, 160))
    image.paste((230, 200, 20), (4000, 3000, 8000, 6000))
    image.save(root / "images/indoor/huge.jpg", quality=70)


def bomb_png() -> bytes:
    """A PNG whose header claims 20,000 x 10,000 pixels (over PIL's hard limit of 179 Mpixel)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bomb_header(root):
    (root / "images/indoor/bomb.png").write_bytes(bomb_png())


def bomb_in_perseg(root):
    (root / "Images/object_1/02.jpg").write_bytes(bomb_png())  # a .jpg name: read by its content


CASES = {  # case -> (layout, change, outcome: "runs", "skipped: <file>" (one warning), or the file named by the one error line)
    "EXIF-rotated JPEG": ("perseg", exif_rotated, "runs"),
    "grayscale JPEG": ("perseg", convert("object_0/02.jpg", "L"), "runs"),
    "CMYK JPEG": ("perseg", convert("object_1/01.jpg", "CMYK"), "runs"),
    "RGBA PNG": ("perseg", convert("object_0/03.jpg", "RGBA", ".png"), "runs"),
    "palette PNG": ("perseg", convert("object_1/03.jpg", "P", ".png"), "runs"),
    "16-bit PNG mask": ("perseg", mask_16bit, "runs"),
    "mask saved as JPEG": ("perseg", mask_as_jpeg, "runs"),
    "image under 64 px": ("perseg", tiny_image, "runs"),
    "12,000 x 9,000 photo": ("custom", huge_photo, "runs"),
    "decompression bomb in a benchmark": ("perseg", bomb_in_perseg, "02.jpg"),
    "decompression bomb among your photos": ("custom", bomb_header, "skipped: bomb.png"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_real_photos(case, tiny_sam2, tmp_path, monkeypatch, capsys):
    layout, change, outcome = CASES[case]
    root = tmp_path / "data"
    if layout == "perseg":
        write_perseg(root, num_objects=2, images_per_object=4, seed=1, size=(72, 96))
    else:
        write_custom(root, num_objects=1, num_images=2, seed=1, size=(72, 96))
    originals = {p: read_mask(p) for p in root.rglob("Annotations/*/*.png")}
    change(root)
    cfg, ckpt = tiny_sam2
    script, dataset = (sam2_permis, ["--dataset_file", layout]) if layout == "perseg" else (search_photos, [])
    monkeypatch.setattr(sys, "argv", [f"{script.__name__}.py", *dataset, "--data_path", str(root),
                                      "--output_dir", str(tmp_path / "out"), "--sam2_cfg", str(cfg),
                                      "--sam2_checkpoint", str(ckpt), "--device", "cpu",
                                      *(["--save_masks"] if layout == "perseg" else [])])
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # no warning reaches the user
        if outcome != "runs" and not outcome.startswith("skipped"):
            with pytest.raises(SystemExit) as stopped:
                run_cli(script.main, script.get_args_parser())
            err = capsys.readouterr().err.strip().splitlines()
            assert stopped.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and outcome in err[0]
            return
        metrics = run_cli(script.main, script.get_args_parser())
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("warning", "error"))]
    if outcome.startswith("skipped"):  # the search goes on without it, and says so
        skipped = outcome.split(": ")[1]
        assert metrics["photos"] == 2 and [s["file"] for s in metrics["skipped"]] == [f"images/indoor/{skipped}"]
        assert len(err) == 1 and err[0].startswith("warning: skipped: image too large") and skipped in err[0]
        return
    if layout == "custom":
        assert metrics["photos"] == 3 and err == []
        return
    assert all(m["targets"] == 3 for m in metrics["per_object"].values())  # nothing skipped
    for mask_file, original in originals.items():  # every mask read as drawn, 16 bits included
        assert np.array_equal(read_mask(mask_file, exif=True), original) or case == "mask saved as JPEG" or \
            (case == "image under 64 px" and "object_1/02" in str(mask_file))
    for saved in (tmp_path / "out" / "masks").rglob("*.png"):  # predictions at their image's view
        obj, stem = saved.parent.name, saved.stem
        assert np.asarray(Image.open(saved)).shape == read_mask(root / f"Annotations/{obj}/{stem}.png", exif=True).shape
    if case == "mask saved as JPEG":
        assert len(err) == 1 and "grey values" in err[0] and "object_1/01.png" in err[0]
    else:
        assert err == []
