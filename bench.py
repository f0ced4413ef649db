"""Speed benchmark: every stage against its baseline and its floor, measured in one run.

    python bench.py --suite all --quick            # a few minutes on CPU
    python bench.py --suite retrieval --device cuda

SAM2 is the real SAM2.1-tiny architecture with seeded random weights by default (speed does not
depend on the weight values); DINOv2 is the ViT-S/14 architecture, random. Suites:
- retrieval: all-pairs (PerMIR-like) and K candidates per query with shared candidates
  (ILIAS-like) through (a) the official SAM2VideoPredictor, one pair at a time; (b) this
  project's path (the scoring functions of sam2_permir_obj_scores.py and sam2_reranking.py);
  (c) the floor: distinct images x t_encode + pairs x t_pair, both measured in this run;
- segmentation: seconds per target image, sam2_permis.py's path against the official predictor;
- features: images/s of precompute_features_ilias.py's pipeline (JPEG decode in DataLoader
  workers, resize, forward) against the bare forward on ready tensors of the same batch size;
- topk: time and peak memory (each in its own process) of the sharded search against one flat
  index holding everything; the results must be identical.
Prints one table and writes <output_dir>/bench_results.json (and metrics.json, the same).
"""
import argparse
import contextlib
import functools
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from utils.cli import finish, format_table, pair_batch_size, set_seed
from utils.errors import CliParser, run_cli
from utils.io import pack_masks, save_json
from utils.sam2_model import SAM2_1_MODELS, build_sam2_model, resolve_device
from utils.synthetic import render_object, render_scene, write_jpeg, write_webdataset_tar

SUITES = ("retrieval", "segmentation", "features", "topk")


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--sam2_cfg", default=SAM2_1_MODELS["tiny"][0])
    parser.add_argument("--dinov2_model", default=None,
                        help="DINOv2 folder or hub id (default: ViT-S/14 architecture, random weights)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, same measurements")
    parser.add_argument("--image_size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    parser.add_argument("--topk_database", type=int, default=None, help="default 1M (quick: 200k)")
    parser.add_argument("--topk_shard", type=int, default=None, help="default 100k (quick: 20k)")
    parser.add_argument("--topk_queries", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument("--num_workers", type=int, default=2, help="decoding workers of the features suite")
    parser.add_argument("--output_dir", default="outputs/bench")
    parser.add_argument("--seed", type=int, default=0)
    return parser


@contextlib.contextmanager
def quiet_progress():
    """The official predictor draws progress bars on every call; keep the table readable."""
    import sam2.sam2_video_predictor
    import sam2.utils.misc

    silent = functools.partial(tqdm, disable=True)
    with mock.patch.object(sam2.sam2_video_predictor, "tqdm", silent), mock.patch.object(sam2.utils.misc, "tqdm", silent):
        yield


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def write_scenes(folder: Path, count: int, size, seed: int):
    """`count` JPEG scenes holding the same object; returns their paths and object masks."""
    rng, obj = np.random.default_rng(seed), render_object(seed)
    paths, masks = [], []
    for i in range(count):
        image, mask = render_scene(rng, obj, *size, scale=float(rng.uniform(0.3, 0.5)))
        paths.append(write_jpeg(folder / f"img{i:03d}.jpg", image))
        masks.append(mask)
    return paths, masks


def mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def official_pair(predictor, folder: Path, reference: Path, target: Path, mask=None, box=None):
    """One pair as a user of sam2 writes it: a 2-frame video, a prompt on frame 0, propagate."""
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir()
    shutil.copy(reference, video / "0.jpg")
    shutil.copy(target, video / "1.jpg")
    state = predictor.init_state(str(video))
    if mask is not None:
        predictor.add_new_mask(state, 0, 1, mask)
    else:
        predictor.add_new_points_or_box(state, 0, 1, box=box)
    for _ in predictor.propagate_in_video(state):
        pass


def measure_floor(engine, paths, masks, repeats: int = 2) -> tuple[float, float]:
    """(seconds per image encode, seconds per pair of memory attention + decoder), batch 1."""
    from PIL import Image

    frame = engine.prepare(Image.open(paths[0]), image_id="floor")
    pixels = frame.pixels[None].to(engine.device)
    with torch.no_grad():
        engine.model.forward_image(pixels)  # warm-up
        t_encode = min(timed(engine.model.forward_image, pixels)[0] for _ in range(repeats))
    reference = engine.encode_reference([frame], masks=[masks[0]])
    engine.score_pairs([reference], [frame], with_masks=False)  # warm-up, features cached
    t_pair = min(timed(engine.score_pairs, [reference], [frame], with_masks=False)[0] for _ in range(repeats))
    engine.forget(["floor"])
    return t_encode, t_pair


def bench_retrieval(args, predictor, model, folder: Path, floor) -> dict:
    from sam2_permir_obj_scores import sam2_scores
    from sam2_reranking import QueryMemories, score_chunk
    from utils.pseudo_video import PseudoVideo

    t_encode, t_pair = floor
    results = {}
    # all pairs: every query against every gallery image, queries prompted with their mask
    n_queries, n_gallery = (2, 3) if args.quick else (2, 6)
    paths, masks = write_scenes(folder / "allpairs", n_queries + n_gallery, args.image_size, args.seed)
    queries, gallery = paths[:n_queries], paths[n_queries:]
    with quiet_progress():
        t_official, _ = timed(lambda: [official_pair(predictor, folder, q, g, mask=masks[i])
                                       for i, q in enumerate(queries) for g in gallery])
    engine = PseudoVideo(model)
    data = {"query_paths": [str(p) for p in queries], "gallery_paths": [str(p) for p in gallery],
            "query_masks": pack_masks(masks[:n_queries])}
    batch = pair_batch_size(None, engine.device)  # the scripts' default for this device
    t_ours, _ = timed(sam2_scores, SimpleNamespace(batch_size=batch, score="iou"), data, engine)
    results["all_pairs"] = retrieval_row(n_queries * n_gallery, len(paths), t_official, t_ours,
                                         engine.encoder_passes, t_encode, t_pair)

    # K candidates per query, some shared between queries, queries prompted with their box
    n_queries, k, shared = (2, 4, 2) if args.quick else (2, 8, 4)
    n_candidates = n_queries * k - (n_queries - 1) * shared
    paths, masks = write_scenes(folder / "kcand", n_queries + n_candidates, args.image_size, args.seed + 1)
    images_dir = folder / "kcand_images"
    keys = [f"img/{i:03d}" for i in range(len(paths))]
    for key, path in zip(keys, paths):
        (images_dir / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, images_dir / f"{key}.jpg")
    topk = np.array([np.arange(q * (k - shared), q * (k - shared) + k) for q in range(n_queries)])
    boxes = [mask_box(m) for m in masks[:n_queries]]
    with quiet_progress():
        t_official, _ = timed(lambda: [official_pair(predictor, folder, paths[q], paths[n_queries + c], box=boxes[q])
                                       for q in range(n_queries) for c in topk[q]])
    engine = PseudoVideo(model)
    data = {"query_keys": keys[:n_queries], "database_keys": keys[n_queries:], "db_keys": keys[n_queries:],
            "boxes": [[[b[0], b[1], b[2] - b[0], b[3] - b[1]]] for b in boxes]}
    run = SimpleNamespace(batch_size=batch, score="iou", images_dir=str(images_dir))
    memories = QueryMemories(engine, images_dir, data, "box")
    t_ours, _ = timed(score_chunk, run, engine, memories, data, np.unique(topk), topk)
    results["k_candidates"] = retrieval_row(n_queries * k, n_queries + n_candidates, t_official, t_ours,
                                            engine.encoder_passes, t_encode, t_pair)
    return results


def retrieval_row(pairs, distinct, t_official, t_ours, passes, t_encode, t_pair) -> dict:
    t_floor = distinct * t_encode + pairs * t_pair
    return {"pairs": pairs, "distinct_images": distinct, "encoder_passes": passes,
            "official_s_per_pair": t_official / pairs, "ours_s_per_pair": t_ours / pairs,
            "floor_s_per_pair": t_floor / pairs, "speedup_vs_official": t_official / t_ours,
            "floor_speedup_vs_official": t_official / t_floor, "ours_vs_floor": t_ours / t_floor}


def bench_segmentation(args, predictor, model, folder: Path) -> dict:
    from sam2_permis import segment
    from utils.loaders.common import Episode, Sample
    from utils.pseudo_video import PseudoVideo

    targets = 2 if args.quick else 4
    paths, masks = write_scenes(folder / "seg", targets + 1, args.image_size, args.seed + 2)
    with quiet_progress():
        t_official, _ = timed(lambda: [official_pair(predictor, folder, paths[0], t, mask=masks[0]) for t in paths[1:]])
    episode = Episode("object", [Sample(paths[0], masks[0])], [Sample(p, m) for p, m in zip(paths[1:], masks[1:])])
    run = SimpleNamespace(output_dir=str(folder / "seg_out"), batch_size=pair_batch_size(None, model.device),
                          save_masks=False, visualize=False)
    t_ours, _ = timed(segment, run, PseudoVideo(model), [episode])
    return {"targets": targets, "official_s_per_target": t_official / targets, "ours_s_per_target": t_ours / targets,
            "speedup_vs_official": t_official / t_ours}


def bench_features(args, device, folder: Path) -> dict:
    from transformers import Dinov2Config, Dinov2Model

    from precompute_features_ilias import extract_shards, get_args_parser as features_parser
    from utils import dinov2

    count, resolution, batch = (64, 224, 16) if args.quick else (64, 518, 16)
    model_dir = args.dinov2_model
    if model_dir is None:  # the ViT-S/14 architecture, random weights
        model_dir = str(folder / "dinov2_vits14")
        torch.manual_seed(args.seed)
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=14, image_size=518)).save_pretrained(model_dir)
    model = dinov2.load_dinov2(model_dir, device)
    paths, _ = write_scenes(folder / "feat", count, args.image_size, args.seed + 3)
    write_webdataset_tar(folder / "bench-000000.tar", [(f"{i:06d}/{i:06d}", p.read_bytes(), None)
                                                       for i, p in enumerate(paths)])
    run = features_parser().parse_args(["--source", "local", "--data_path", str(folder), "--distractors_shards",
                                        "bench-000000.tar", "--model", model_dir, "--resolution", str(resolution),
                                        "--batch_size", str(batch), "--num_workers", str(args.num_workers),
                                        "--output_dir", str(folder / "feat_out")])
    settings = {"model": model_dir, "resolution": resolution, "query_crop": "none"}
    ready = torch.randn(batch, 3, resolution, resolution)
    dinov2.embed(model, ready)  # warm-up
    bare = lambda: timed(lambda: [dinov2.embed(model, ready) for _ in range(count // batch)])[0]
    t_before = bare()  # the bare forward before and after the pipeline: this machine's speed drifts
    t_pipeline, _ = timed(extract_shards, run, model, "distractors", ["bench-000000.tar"],
                          folder / "feat_out" / "distractors", settings, None, 0)
    t_bare = (t_before + bare()) / 2
    return {"images": count, "resolution": resolution, "pipeline_images_per_s": count / t_pipeline,
            "bare_forward_images_per_s": (count // batch * batch) / t_bare,
            "pipeline_vs_bare": (count / t_pipeline) / ((count // batch * batch) / t_bare)}


def _search(mode: str, folder: str, queries_path: str, k: int, connection) -> None:
    """Run one search in a fresh process; send (seconds, peak RSS in MB, indices)."""
    from utils.retrieval import sharded_topk, shard_search

    queries = np.load(queries_path)
    shards = sorted(Path(folder).glob("shard_*.npy"))
    start = time.perf_counter()
    if mode == "sharded":
        _, indices = sharded_topk(queries, (np.load(s) for s in shards), k)
    elif mode == "flat":
        database = np.concatenate([np.load(s) for s in shards])
        scores, indices = shard_search(queries, database, k)
        order = np.lexsort((indices, -scores), axis=1)  # ties by the lower index, as the merge does
        indices = np.take_along_axis(indices, order, axis=1)
    else:  # the process's own footprint: numpy, faiss and the queries
        import faiss  # noqa: F401  (imported for its memory)
        indices = np.zeros((len(queries), k), np.int64)
    seconds = time.perf_counter() - start
    connection.send((seconds, peak_memory_mb(), indices))


def peak_memory_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: a spawned child inherits the
    parent's ru_maxrss through exec, so it would report the (large) benchmark process."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_process(*args):
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_search, args=(*args, sender))
    process.start()
    sender.close()  # so that a crashed child ends recv() instead of leaving it waiting
    try:
        result = receiver.recv()
    except EOFError:
        raise RuntimeError(f"the {args[0]} search process died (exit code {process.exitcode})") from None
    finally:
        process.join()
    return result


def bench_topk(args, folder: Path) -> dict:
    size = args.topk_database or (200_000 if args.quick else 1_000_000)
    shard = args.topk_shard or (20_000 if args.quick else 100_000)
    n_queries, k, dim = args.topk_queries or (200 if args.quick else 1000), 100, 384
    rng = np.random.default_rng(args.seed)
    for s, start in enumerate(range(0, size, shard)):
        block = rng.standard_normal((min(shard, size - start), dim)).astype(np.float32)
        np.save(folder / f"shard_{s:05d}.npy", block / np.linalg.norm(block, axis=1, keepdims=True))
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    np.save(folder / "queries.npy", queries / np.linalg.norm(queries, axis=1, keepdims=True))
    base = run_in_process("baseline", str(folder), str(folder / "queries.npy"), k)
    sharded = run_in_process("sharded", str(folder), str(folder / "queries.npy"), k)
    flat = run_in_process("flat", str(folder), str(folder / "queries.npy"), k)
    shard_mb = shard * dim * 4 / 2**20
    return {"database": size, "shard": shard, "queries": n_queries, "k": k,
            "sharded_s": sharded[0], "flat_s": flat[0],
            "sharded_peak_mb": sharded[1] - base[1], "flat_peak_mb": flat[1] - base[1],
            "one_shard_mb": shard_mb, "database_mb": size * dim * 4 / 2**20,
            "identical": bool(np.array_equal(sharded[2], flat[2]))}


def main(args) -> dict:
    set_seed(args.seed)
    device = resolve_device(args.device)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    results = {"device": str(device), "sam2_cfg": args.sam2_cfg, "quick": args.quick,
               "image_size": args.image_size}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        folder = Path(tmp)
        if {"retrieval", "segmentation"} & set(suites):
            torch.manual_seed(args.seed)
            # the model is the official SAM2VideoPredictor: (a) calls its own API, (b) our engine
            model = predictor = build_sam2_model(args.sam2_cfg, None, device)
            if "retrieval" in suites:
                from utils.pseudo_video import PseudoVideo

                paths, masks = write_scenes(folder / "floor", 1, args.image_size, args.seed)
                floor = measure_floor(PseudoVideo(model), paths, masks)
                results["floor"] = {"t_encode_s": floor[0], "t_pair_s": floor[1]}
                results["retrieval"] = bench_retrieval(args, predictor, model, folder, floor)
                # this machine's speed drifts: the floor, measured again after the workloads,
                # must not be the one that makes our path look close to it
                after = measure_floor(PseudoVideo(model), paths, masks)
                results["floor_after"] = {"t_encode_s": after[0], "t_pair_s": after[1]}
            if "segmentation" in suites:
                results["segmentation"] = bench_segmentation(args, predictor, model, folder)
        if "features" in suites:
            results["features"] = bench_features(args, device, folder)
        if "topk" in suites:
            (folder / "topk").mkdir()
            results["topk"] = bench_topk(args, folder / "topk")
    save_json(Path(args.output_dir) / "bench_results.json", results)
    return finish(args.output_dir, results, report(results))


def report(results: dict) -> str:
    rows = []
    for name in ("floor", "floor_after"):
        if name in results:
            rows.append([f"{name.replace('_', ' ')}: t_encode | t_pair (s)", f"{results[name]['t_encode_s']:.3f}",
                         f"{results[name]['t_pair_s']:.3f}", "", ""])
    for name, r in results.get("retrieval", {}).items():
        rows.append([f"{name}: s/pair official | ours | floor", f"{r['official_s_per_pair']:.3f}",
                     f"{r['ours_s_per_pair']:.3f}", f"{r['floor_s_per_pair']:.3f}",
                     f"{r['speedup_vs_official']:.2f}x vs official (floor: {r['floor_speedup_vs_official']:.2f}x), "
                     f"{r['ours_vs_floor']:.2f}x floor, "
                     f"{r['encoder_passes']} passes / {r['distinct_images']} images"])
    if "segmentation" in results:
        r = results["segmentation"]
        rows.append(["segmentation: s/target official | ours", f"{r['official_s_per_target']:.3f}",
                     f"{r['ours_s_per_target']:.3f}", "", f"{r['speedup_vs_official']:.2f}x vs official"])
    if "features" in results:
        r = results["features"]
        rows.append([f"features @{r['resolution']}: img/s pipeline | bare", f"{r['pipeline_images_per_s']:.2f}",
                     f"{r['bare_forward_images_per_s']:.2f}", "", f"{r['pipeline_vs_bare']:.2f}x bare"])
    if "topk" in results:
        r = results["topk"]
        rows.append([f"top-K {r['database']:,} x 384: s sharded | flat", f"{r['sharded_s']:.2f}", f"{r['flat_s']:.2f}",
                     "", f"peak MB {r['sharded_peak_mb']:.0f} vs {r['flat_peak_mb']:.0f} (one shard "
                     f"{r['one_shard_mb']:.0f}); identical: {r['identical']}"])
    return format_table(["measure", "a", "b", "c", "ratio"], rows)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
