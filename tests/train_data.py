"""Small Revisited Oxford/Paris-format and UnED-format folders for training tests."""
import json
import pickle
from pathlib import Path

import numpy as np

from utils.synthetic import render_object, render_scene, write_jpeg

SIZE = (60, 80)
LANDMARKS = ("all_souls", "balliol", "christ_church", "hertford", "keble")


def write_revisitop(root, name="roxford5k", landmarks=LANDMARKS, seed=0, lonely=None) -> Path:
    """Per landmark 2 queries; per query 2 easy, 1 hard, 1 junk image. `lonely`: a landmark with
    one query and no easy/hard image (its class has a single member)."""
    rng, folder = np.random.default_rng(seed), Path(root) / name
    imlist, qimlist, gnd = [], [], []

    def image(obj, scale):
        name_ = f"img_{len(imlist):04d}"
        write_jpeg(folder / "jpg" / f"{name_}.jpg", render_scene(rng, obj, *SIZE, scale=scale)[0])
        imlist.append(name_)
        return len(imlist) - 1

    for k, mark in enumerate(list(landmarks) + ([lonely] if lonely else [])):
        obj = render_object(seed * 100 + k)
        for q in range(1 if mark == lonely else 2):
            query = f"{mark}_{q + 1:06d}"
            image_scene, mask = render_scene(rng, obj, *SIZE, scale=0.6)
            write_jpeg(folder / "jpg" / f"{query}.jpg", image_scene)
            ys, xs = np.nonzero(mask)
            qimlist.append(query)
            if mark == lonely:
                gnd.append({"bbx": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())],
                            "easy": [], "hard": [], "junk": []})
                continue
            gnd.append({"bbx": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())],
                        "easy": [image(obj, 0.5), image(obj, 0.4)], "hard": [image(obj, 0.2)],
                        "junk": [image(obj, 0.1)]})
    with open(folder / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    return Path(root)


def write_uned(root, domains=("cars", "food2k"), classes=3, per_class=3, seed=0) -> Path:
    rng, root = np.random.default_rng(seed), Path(root)
    for d, domain in enumerate(domains):
        entries = []
        for c in range(classes):
            obj = render_object(seed * 100 + 10 * d + c)
            for i in range(per_class):
                path = f"{domain}/{c:03d}_{i}.jpg"
                write_jpeg(root / "images" / path, render_scene(rng, obj, *SIZE, scale=0.5)[0])
                entries.append({"path": path, "class_id": c})
        (root / "info_files" / domain).mkdir(parents=True, exist_ok=True)
        (root / "info_files" / domain / "train.json").write_text(json.dumps(entries))
    return root
