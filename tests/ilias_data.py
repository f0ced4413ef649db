"""Small ILIAS-format data: webdataset tar shards (jpg, bbox.json, keys <object>/query/Q000_00)
and the official ilias_core/<object>/{query,pos}/ folders with _bbox.txt files."""
import io
from pathlib import Path

import numpy as np

import precompute_features_ilias as features_script
from utils.synthetic import render_object, render_scene, write_webdataset_tar

SIZE = (60, 80)


def _jpeg(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _box(mask) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def make_ilias(root, num_objects=4, positives=3, distractor_shards=(5, 4), seed=0) -> dict:
    """Write queries, db and distractor tar shards and the same queries/db as ilias_core/.
    The last distractor repeats the bytes of the first db image, so their features tie.
    Returns the shard names and the samples (key -> (jpeg bytes, boxes))."""
    root, rng = Path(root), np.random.default_rng(seed)
    queries, db = [], []
    for k in range(num_objects):
        name, obj = f"object_{k:03d}", render_object(seed * 100 + k)
        for j in range(1 + k % 2):  # 1 or 2 queries per object
            image, mask = render_scene(rng, obj, *SIZE, scale=0.6)
            queries.append((f"{name}/query/Q{k:03d}_{j:02d}", _jpeg(image), [_box(mask)]))
        for j in range(positives):
            image, mask = render_scene(rng, obj, *SIZE, scale=float(rng.uniform(0.3, 0.6)))
            db.append((f"{name}/pos/P{k:03d}_{j:02d}", _jpeg(image), [_box(mask)]))
    write_webdataset_tar(root / "queries-000000.tar", queries)
    write_webdataset_tar(root / "db-000000.tar", db)
    distractor_names, distractors = [], {}
    other = render_object(seed * 100 + 99)
    for s, count in enumerate(distractor_shards):
        samples = [(f"{s:06d}/{i:06d}", _jpeg(render_scene(rng, other, *SIZE, scale=0.4)[0]), None)
                   for i in range(count)]
        if s == len(distractor_shards) - 1:
            samples[-1] = (samples[-1][0], db[0][1], None)
        distractors.update({key: jpeg for key, jpeg, _ in samples})
        distractor_names.append(f"distractors-{s:06d}.tar")
        write_webdataset_tar(root / distractor_names[-1], samples)
    for key, jpeg, boxes in queries + db:
        path = root / "ilias_core" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg)
        path.with_name(f"{path.stem}_bbox.txt").write_text("\n".join(" ".join(map(str, b)) for b in boxes) + "\n")
    return {"queries": ["queries-000000.tar"], "db": ["db-000000.tar"], "distractors": distractor_names,
            "samples": {key: (jpeg, boxes) for key, jpeg, boxes in queries + db},
            "distractor_samples": distractors}


def source_args(root, info, **shards):
    names = {split: shards.get(split, info[split]) for split in ("queries", "db", "distractors")}
    return ["--source", "local", "--data_path", str(root), "--queries_shards", *names["queries"],
            "--db_shards", *names["db"], "--distractors_shards", *names["distractors"]]


def extract(root, info, tiny_dinov2, output_dir, *extra, **shards):
    argv = [*source_args(root, info, **shards), "--dinov2", str(tiny_dinov2), "--dinov2_resolution", "56",
            "--output_dir", str(output_dir), "--dinov2_batch_size", "4", "--num_workers", "2", "--device", "cpu",
            *map(str, extra)]
    return features_script.main(features_script.get_args_parser().parse_args(argv))


def official_ilias_ap(hits, scores, num_positives, k=1000):
    """ILIAS `evaluation/src/dataset.py` `_compute_AP`, restated: the list sorted by score and cut
    at k; scikit-learn's AP of (hits, scores) there, times hits / min(k, positives)."""
    from sklearn.metrics import average_precision_score

    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    y_true, y_score = np.asarray(hits)[order], np.asarray(scores)[order]
    if not y_true.any():
        return 0.0
    return average_precision_score(y_true, y_score) * y_true.sum() / min(k, num_positives)


def ilias_map_by_definition(indices, scores, query_keys, db_keys, k=1000):
    aps = []
    for row, row_scores, qkey in zip(indices, scores, query_keys):
        obj = qkey.split("/")[0]
        positives = {i for i, key in enumerate(db_keys) if key.split("/")[0] == obj}
        aps.append(official_ilias_ap([i in positives for i in row], row_scores, len(positives), k))
    return 100 * np.mean(aps)
