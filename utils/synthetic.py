"""Deterministic synthetic data: a distinctive object pasted into different scenes, at different
places and scales, with its exact mask. Used by the demo and by the tests."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils.images import mask_box
from utils.io import atomic_write_bytes, save_png


def render_object(seed: int, size: int = 256) -> Image.Image:
    """An RGBA object of a few coloured parts (transparent outside), the same for a seed."""
    rng = np.random.default_rng(seed)
    obj = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(obj)
    colors = [tuple(int(c) for c in rng.integers(30, 256, 3)) + (255,) for _ in range(4)]
    draw.ellipse([size * 0.1, size * 0.25, size * 0.9, size * 0.95], fill=colors[0])
    for k in range(4):  # stripes across the body
        y = size * (0.35 + 0.13 * k)
        draw.rectangle([size * 0.2, y, size * 0.8, y + size * 0.05], fill=colors[1 + k % 2])
    draw.polygon([(size * 0.5, 0), (size * 0.3, size * 0.3), (size * 0.7, size * 0.3)], fill=colors[3])
    return obj


def render_scene(rng: np.random.Generator, obj: Image.Image, height: int, width: int,
                 scale: float) -> tuple[Image.Image, np.ndarray]:
    """A cluttered background with `obj` pasted at a random place, its side `scale` x the
    image's shorter side. Returns the RGB image and the object's mask."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.integers(0, 200, 3)
    slope = rng.integers(-60, 60, (2, 3))
    pixels = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    scene = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    for _ in range(12):  # distractor shapes
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 16, width // 4), rng.integers(height // 16, height // 4)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x0 + w, y0 + h], fill=color)
    side = max(8, int(scale * min(height, width)))
    sprite = obj.resize((side, side), Image.NEAREST)
    x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    scene.paste(sprite, (x, y), sprite)
    mask = np.zeros((height, width), bool)
    mask[y:y + side, x:x + side] = np.asarray(sprite)[..., 3] > 0
    return scene, mask


def write_jpeg(path, image: Image.Image) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return atomic_write_bytes(path, buf.getvalue())


def write_perseg(root, num_objects: int = 2, images_per_object: int = 5, seed: int = 0,
                 size: tuple[int, int] = (480, 640)) -> list[str]:
    """A PerSeg-format folder: Images/<object>/NN.jpg and Annotations/<object>/NN.png (0/255).
    Image sizes vary a little per image, as in the real set. Returns the object names."""
    root, names = Path(root), []
    rng = np.random.default_rng(seed)
    for k in range(num_objects):
        name = f"object_{k}"
        obj = render_object(seed * 1000 + k)
        for i in range(images_per_object):
            height, width = size[0] + int(rng.integers(-40, 41)), size[1] + int(rng.integers(-40, 41))
            image, mask = render_scene(rng, obj, height, width, scale=float(rng.uniform(0.25, 0.5)))
            write_jpeg(root / "Images" / name / f"{i:02d}.jpg", image)
            save_png(root / "Annotations" / name / f"{i:02d}.png", mask.astype(np.uint8) * 255)
        names.append(name)
    return names


def write_webdataset_tar(path, samples: list[tuple[str, bytes, list | None]]) -> Path:
    """A webdataset tar shard in the ILIAS layout: per sample `<key>.jpg` and, with boxes,
    `<key>.bbox.json` ([x, y, w, h] boxes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, jpeg, boxes in samples:
            members = [(f"{key}.jpg", jpeg)]
            if boxes is not None:
                members.append((f"{key}.bbox.json", json.dumps(boxes).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return atomic_write_bytes(path, buf.getvalue())


def write_custom(root, num_objects: int = 2, num_images: int = 8, seed: int = 0,
                 size: tuple[int, int] = (480, 640)) -> dict:
    """A folder in the `custom` layout (utils/loaders/custom.py): per object a reference photo
    with its mask and a second shot with its box, and photos to search, in two sub-folders, each
    holding one of the objects or none. Returns {object: [photos that hold it]}."""
    root, rng = Path(root), np.random.default_rng(seed)
    holds = {}
    for k in range(num_objects):
        name, obj = f"object_{k}", render_object(seed * 1000 + k)
        image, mask = render_scene(rng, obj, *size, scale=0.5)
        write_jpeg(root / "references" / f"{name}.jpg", image)
        save_png(root / "references" / f"{name}.png", mask.astype(np.uint8) * 255)
        image, mask = render_scene(rng, obj, *size, scale=0.35)
        write_jpeg(root / "references" / f"{name}_2.jpg", image)
        atomic_write_bytes(root / "references" / f"{name}_2.txt", (" ".join(map(str, mask_box(mask))) + "\n").encode())
        holds[name] = []
    blank = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    for i in range(num_images):
        k = i % (num_objects + 1)  # every (num_objects + 1)-th photo holds no object
        obj = render_object(seed * 1000 + k) if k < num_objects else blank
        image, _ = render_scene(rng, obj, *size, scale=float(rng.uniform(0.3, 0.5)))
        photo = f"images/{'outdoor' if i % 2 else 'indoor'}/{i:03d}.jpg"
        write_jpeg(root / photo, image)
        if k < num_objects:
            holds[f"object_{k}"].append(photo)
    return holds
