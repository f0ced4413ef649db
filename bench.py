"""Speed benchmark: every stage in fp32 and with --amp, against its baseline and its floor, in one run.

    python bench.py --quick                          # about 3 minutes on 2 CPU cores
    python bench.py                                  # benchmark scale (about 40 minutes on 2 CPU cores)
    python bench.py --suite retrieval --device cuda

SAM2 is the real SAM2.1-tiny architecture with seeded random weights by default (speed does not
depend on the weight values; the object-score head is lifted so that objects are found and masks
are not blank); DINOv2 is the ViT-S/14 architecture, random. It runs library code only (the pair
scheduler, the engine, the shard reader), on synthetic JPEG scenes. Suites:
- retrieval: a PerMIR-like all-pairs workload (queries x gallery, mask prompts) and an ILIAS-like
  one (K candidates per query, half of them shared by all queries, box prompts), each through
  (a) the official SAM2VideoPredictor, one 2-frame video per pair, timed on a sample of pairs and
  extrapolated (it costs the same for every pair); (b) the pair scheduler in fp32 and with amp;
  (c) the floor: distinct images x t_encode + pairs x t_pair, both measured in this run;
- segmentation: one reference and T targets with masks: the official predictor, fp32, amp; the
  share of mask pixels on which amp and fp32 agree;
- feed: images/s that the decoding workers deliver to the model (JPEG decode, resize, normalise;
  utils/feed.py) with 0, 1, 2, ... workers, for scenes of --image_size and for 12-megapixel
  photos, beside the rate the model encodes them: which of the two bounds a run;
- compile: --compile (torch.compile of the image encoder, memory attention and mask decoder):
  seconds of compiling, then steady-state encode and pair times against eager, in fp32 and with
  amp, and from how many targets (one encode and one pair each) compiling pays;
- features: images/s of the ILIAS feature pipeline (JPEG decode in DataLoader workers, official
  large-side preprocessing, batches of one shape) against the bare forward, in fp32 and with amp;
- topk: time and peak memory (each in its own process) of the sharded search against one flat
  search over everything; the results must be identical;
- photos: your own photos (README), run as a user runs them: search_photos.py on a folder of
  photos, all pairs against a DINOv2 shortlist, wall time;
- photo_index: the DINOv2 part of a search with a shortlist on a generated folder of small photos
  (2,000; quick: 200): the first search, which builds the folder's photo index, a second search
  for another object, and a search after 1% new photos are added; each search's seconds, the
  photos embedded, and the projection of these costs to 100,000 photos.
For fp32 against amp, every suite reports the speed-up, the largest score (or feature) difference
and the share of tied scores in each. Every run names its processor, measures its peak matmul
rate (fp32, bf16) and counts the FLOPs of one encode and one pair (utils/machine.py), so that
each phase's speed is also a share of what this machine can do. Prints one table and writes
<output_dir>/metrics.json.
"""
import contextlib
import functools
import json
import multiprocessing
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from utils import dinov2
from utils.amp import amp_enabled
from utils.cli import CliParser, add_output_args, finish, format_table, run_cli, setup
from utils.dist import default_pair_batch_size
from utils.loaders.common import open_image
from utils.loaders.custom import CustomData, load_custom
from utils.feed import FrameFeed
from utils.loaders.ilias import ShardBatches, shard_loader
from utils.machine import count_flops, describe, peak_matmul_flops, summary
from utils.pair_scoring import PairScheduler, ReferenceFrame
from utils.photo_search import Models, SearchOptions, shortlists
from utils.pseudo_video import Prompt, PseudoVideo, normalise
from utils.sam2_model import SAM2_1_MODELS, build_sam2_model
from utils.synthetic import render_object, render_scene, write_custom, write_jpeg, write_webdataset_tar

SUITES = ("retrieval", "segmentation", "feed", "compile", "features", "topk", "photos", "photo_index")
WORKLOADS = {  # name: (queries, gallery per query, shared by all queries), full and --quick
    "all_pairs": {"full": (10, 30, 30), "quick": (2, 3, 3)},
    "k_candidates": {"full": (10, 50, 25), "quick": (2, 4, 2)},
}


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    parser.add_argument("--suite", nargs="+", choices=[*SUITES, "all"], default=["all"])
    parser.add_argument("--sam2_cfg", default=SAM2_1_MODELS["tiny"][0])
    parser.add_argument("--dinov2", default=None,
                        help="DINOv2 folder or hub id (default: ViT-S/14 architecture, random weights)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true", help="small workloads, same measurements")
    parser.add_argument("--official_pairs", type=int, default=None,
                        help="pairs the official predictor is timed on, per workload (default 4; quick 2)")
    parser.add_argument("--image_size", type=int, nargs=2, default=[768, 1024], metavar=("H", "W"))
    parser.add_argument("--photo_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="feed: a camera photo's size (default 3000 x 4000, 12 Mpixel; quick: 2 x --image_size)")
    parser.add_argument("--dinov2_resolution", type=int, default=None, help="default 724 (quick: 224)")
    parser.add_argument("--topk_database", type=int, default=None, help="default 1M (quick: 200k)")
    parser.add_argument("--topk_shard", type=int, default=None, help="default 100k (quick: 20k)")
    parser.add_argument("--topk_queries", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument("--num_workers", type=int, default=2, help="decoding workers of the features suite")
    parser.add_argument("--index_photos", type=int, default=None, help="photo_index: photos (default 2000; quick 200)")
    add_output_args(parser, "outputs/bench")
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


def write_scenes(folder: Path, count: int, size, seed: int, objects: int = 1):
    """`count` JPEG scenes, scene i holding object i % objects; their paths and object masks."""
    rng = np.random.default_rng(seed)
    sprites = [render_object(seed * 100 + k) for k in range(objects)]
    paths, masks = [], []
    for i in range(count):
        image, mask = render_scene(rng, sprites[i % objects], *size, scale=float(rng.uniform(0.3, 0.5)))
        paths.append(write_jpeg(folder / f"img{i:04d}.jpg", image))
        masks.append(mask)
    return paths, masks


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def official_pair(predictor, folder: Path, reference: Path, target: Path, prompt: Prompt):
    """One pair as a user of sam2 writes it: a 2-frame video, a prompt on frame 0, propagate."""
    video = folder / "video"
    shutil.rmtree(video, ignore_errors=True)
    video.mkdir()
    shutil.copy(reference, video / "0.jpg")
    shutil.copy(target, video / "1.jpg")
    state = predictor.init_state(str(video))
    if prompt.mask is not None:
        predictor.add_new_mask(state, 0, 1, prompt.mask)
    else:
        predictor.add_new_points_or_box(state, 0, 1, box=np.array(prompt.box, np.float32))
    for _ in predictor.propagate_in_video(state):
        pass


def measure_floor(engine: PseudoVideo, path: Path, mask: np.ndarray, repeats: int = 2) -> dict:
    """Seconds of one image encode and of one pair's memory attention + decoder (batch 1), and
    of the first of each (a warm-up; compiling, for a compiled engine)."""
    frame = engine.prepare(open_image(path), image_id="floor")
    pixels = normalise(frame.pixels[None].to(engine.device))

    def encode():
        with torch.no_grad(), engine.autocast():
            engine.model.forward_image(pixels)
        synchronize(engine.device)

    def pair():
        engine.score_pairs([reference], [frame], with_masks=False)
        synchronize(engine.device)

    first_encode, _ = timed(encode)
    t_encode = min(timed(encode)[0] for _ in range(repeats))
    first_reference, reference = timed(engine.encode_reference, [frame], [Prompt(mask=mask)])
    first_pair, _ = timed(pair)  # features cached
    t_pair = min(timed(pair)[0] for _ in range(repeats))
    engine.forget(["floor"])
    return {"t_encode_s": t_encode, "t_pair_s": t_pair, "first_calls_s": first_encode + first_reference + first_pair}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_flops(model, path: Path, mask: np.ndarray) -> dict:
    """FLOPs of one encode and of one pair (utils/machine.py: attention counted too)."""
    engine = PseudoVideo(model)
    frame = engine.prepare(open_image(path), image_id="flops")
    with torch.no_grad():
        encode = count_flops(model.forward_image, normalise(frame.pixels[None].to(engine.device)))
        reference = engine.encode_reference([frame], [Prompt(mask=mask)])
        pair = count_flops(engine.score_pairs, [reference], [frame], with_masks=False)
    engine.forget(["flops"])
    return {"encode": encode, "pair": pair}


def score_agreement(fp32: np.ndarray, amp: np.ndarray) -> dict:
    """How amp's scores compare with fp32's: largest difference, and the share of scores tied with
    another score of the same run, in each."""
    tied = lambda s: float(1 - len(np.unique(s)) / len(s)) if len(s) else 0.0
    return {"max_score_diff": float(np.max(np.abs(fp32 - amp))) if len(fp32) else 0.0,
            "tied_share_fp32": tied(fp32), "tied_share_amp": tied(amp)}


def workload(name: str, folder: Path, args) -> dict:
    """Images, references and pairs of a retrieval workload (see WORKLOADS)."""
    n_queries, per_query, shared = WORKLOADS[name]["quick" if args.quick else "full"]
    if name == "all_pairs":
        count = n_queries + per_query
        candidates = [list(range(n_queries, count))] * n_queries
    else:
        count = n_queries + shared + n_queries * (per_query - shared)
        own = lambda q: range(n_queries + shared + q * (per_query - shared), n_queries + shared + (q + 1) * (per_query - shared))
        candidates = [list(range(n_queries, n_queries + shared)) + list(own(q)) for q in range(n_queries)]
    paths, masks = write_scenes(folder / name, count, args.image_size, args.seed + len(name), objects=n_queries)
    prompts = {q: Prompt(mask=masks[q]) if name == "all_pairs" else Prompt(box=mask_box(masks[q]))
               for q in range(n_queries)}
    references = {q: [ReferenceFrame(str(paths[q]), prompts[q])] for q in range(n_queries)}
    if name == "all_pairs":  # gallery-major, as sam2_permir_obj_scores.py orders them
        pairs = [(q, str(paths[c])) for c in candidates[0] for q in range(n_queries)]
    else:  # query-major, as sam2_reranking.py's chunks order them
        pairs = [(q, str(paths[c])) for q in range(n_queries) for c in candidates[q]]
    return {"paths": paths, "prompts": prompts, "references": references, "pairs": pairs,
            "distinct": len(set(str(p) for p in paths))}


def run_scheduler(engine: PseudoVideo, batch_size: int, references, pairs, with_masks=False):
    """(seconds, scores in pair order, mask logits in pair order or None) through the scheduler."""
    scheduler = PairScheduler(engine, lambda image_id: open_image(image_id), batch_size)
    scores, masks = np.zeros(len(pairs), np.float32), [None] * len(pairs)

    def run():
        for batch, result in scheduler.batches(pairs, references, with_masks=with_masks):
            scores[batch] = result.score("iou").numpy()
            for row, position in enumerate(batch):
                masks[position] = result.mask_logit(row).numpy() > 0 if with_masks else None

    seconds, _ = timed(run)
    return seconds, scores, masks


def bench_retrieval(args, engines, official, folder: Path, floors: dict) -> dict:
    """`engines()`: fresh fp32 and amp engines (caches and counters empty)."""
    results = {}
    batch = default_pair_batch_size(None, official.device)
    sample = args.official_pairs or (2 if args.quick else 4)
    for name in WORKLOADS:
        work = workload(name, folder, args)
        pairs, n_pairs = work["pairs"], len(work["pairs"])
        with quiet_progress():
            t_official, _ = timed(lambda: [official_pair(official, folder, Path(work["references"][q][0].image), Path(t),
                                                         work["prompts"][q]) for q, t in pairs[:sample]])
        row = {"pairs": n_pairs, "distinct_images": work["distinct"], "official_sampled_pairs": min(sample, n_pairs),
               "official_s_per_pair": t_official / min(sample, n_pairs)}
        scores = {}
        for precision, engine in engines().items():
            seconds, scores[precision], _ = run_scheduler(engine, batch, work["references"], pairs)
            floor = floors[precision]
            t_floor = work["distinct"] * floor["t_encode_s"] + n_pairs * floor["t_pair_s"]
            row[precision] = {"s_per_pair": seconds / n_pairs, "encoder_passes": engine.encoder_passes,
                              "floor_s_per_pair": t_floor / n_pairs, "vs_floor": seconds / t_floor,
                              "speedup_vs_official": row["official_s_per_pair"] / (seconds / n_pairs)}
        row["amp_speedup"] = row["fp32"]["s_per_pair"] / row["amp"]["s_per_pair"]
        row.update(score_agreement(scores["fp32"], scores["amp"]))
        results[name] = row
    return results


def bench_segmentation(args, engines, official, folder: Path) -> dict:
    targets = 2 if args.quick else 4
    paths, masks = write_scenes(folder / "seg", targets + 1, args.image_size, args.seed + 2)
    prompt = Prompt(mask=masks[0])
    with quiet_progress():
        t_official, _ = timed(lambda: [official_pair(official, folder, paths[0], t, prompt) for t in paths[1:]])
    references = {"object": [ReferenceFrame(str(paths[0]), prompt)]}
    pairs = [("object", str(p)) for p in paths[1:]]
    row = {"targets": targets, "official_s_per_target": t_official / targets}
    scores, predicted = {}, {}
    for precision, engine in engines().items():
        seconds, scores[precision], predicted[precision] = run_scheduler(
            engine, default_pair_batch_size(None, official.device), references, pairs, with_masks=True)
        row[precision] = {"s_per_target": seconds / targets, "speedup_vs_official": t_official / seconds}
    row["amp_speedup"] = row["fp32"]["s_per_target"] / row["amp"]["s_per_target"]
    equal = sum(int((a == b).sum()) for a, b in zip(predicted["fp32"], predicted["amp"]))
    row["mask_agreement"] = equal / sum(m.size for m in predicted["fp32"])
    row["masks_not_blank"] = all(m.any() for m in predicted["fp32"])
    row.update(score_agreement(scores["fp32"], scores["amp"]))
    return row


def bench_feed(args, folder: Path, image_size: int, encode_s: dict) -> dict:
    """Images/s the feed delivers with 0, 1, 2, ... decoding workers (up to this machine's
    cores), for scenes and for camera-sized photos, beside the model's encode rate: the steady
    rate, after the first image (the workers' start-up is paid once per run)."""
    sizes = {"scene": tuple(args.image_size),
             "photo": tuple(args.photo_size or ([2 * v for v in args.image_size] if args.quick else (3000, 4000)))}
    count = 6 if args.quick else 16
    row = {"encode_images_per_s": {p: 1 / t for p, t in encode_s.items()}, "image_size": image_size}
    cores = describe(torch.device("cpu"))["cores"]
    for name, size in sizes.items():
        paths, _ = write_scenes(folder / f"feed_{name}", count, size, args.seed + 5)
        ids = [str(p) for p in paths]
        rates = {}
        for workers in range(0, cores + 1):
            frames = FrameFeed(open_image, image_size, workers).frames(ids)
            next(frames)
            seconds, _ = timed(lambda: [frame for frame in frames])
            rates[workers] = (count - 1) / seconds
        row[name] = {"size": list(size), "images": count, "images_per_s": rates}
    return row


def bench_compile(args, device: torch.device, official, paths, masks, amp: bool, eager: dict) -> dict:
    """--compile against eager, fp32 and amp: compile seconds (the first calls, less the steady
    ones), steady encode and pair times, and from how many targets it pays."""
    row = {}
    for precision, precision_amp in (("fp32", False), ("amp", amp)):
        model = build_sam2_model(args.sam2_cfg, None, device)
        model.load_state_dict(official.state_dict())
        compiled = measure_floor(PseudoVideo(model, precision_amp, compiled=True), paths[0], masks[0])
        compile_s = compiled["first_calls_s"] - eager[precision]["first_calls_s"]
        saving = (eager[precision]["t_encode_s"] + eager[precision]["t_pair_s"]
                  - compiled["t_encode_s"] - compiled["t_pair_s"])  # per target: one encode, one pair
        row[precision] = {**compiled, "compile_s": compile_s,
                          "encode_speedup": eager[precision]["t_encode_s"] / compiled["t_encode_s"],
                          "pair_speedup": eager[precision]["t_pair_s"] / compiled["t_pair_s"],
                          "pays_after_targets": compile_s / saving if saving > 0 else None}
    return row


def dinov2_name(args, folder: Path) -> str:
    """--dinov2, or a folder holding the ViT-S/14 architecture with seeded random weights."""
    if args.dinov2 is not None:
        return args.dinov2
    model_dir = folder / "dinov2_vits14"
    if not model_dir.is_dir():
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(args.seed)
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=14, image_size=518)).save_pretrained(model_dir)
    return str(model_dir)


def bench_features(args, device: torch.device, folder: Path, amp_on: bool) -> dict:
    count, batch = (16, 8) if args.quick else (24, 8)
    resolution = args.dinov2_resolution or (224 if args.quick else 724)
    paths, _ = write_scenes(folder / "feat", count, args.image_size, args.seed + 3)
    write_webdataset_tar(folder / "bench-000000.tar", [(f"{i:06d}/{i:06d}", p.read_bytes(), None)
                                                       for i, p in enumerate(paths)])
    row = {"images": count, "resolution": resolution}
    features = {}
    for precision, amp in (("fp32", False), ("amp", amp_on)):
        model = dinov2.load_dinov2(dinov2_name(args, folder), device, amp)
        stream = ShardBatches([("bench", str(folder / "bench-000000.tar"))], "distractors",
                              lambda image: dinov2.preprocess(image, resolution, "large_side", model.config.patch_size),
                              batch, crop_to_box=False, max_images=None)
        ready = [b["pixels"] for b in shard_loader(stream, 0) if b["pixels"] is not None]
        dinov2.embed(model, ready[0], amp)  # warm-up
        bare = lambda: timed(lambda: [dinov2.embed(model, pixels, amp) for pixels in ready])[0]
        t_before = bare()  # the bare forward before and after the pipeline: this machine's speed drifts

        def pipeline():
            return [(b["positions"], dinov2.embed(model, b["pixels"], amp)) for b in shard_loader(stream, args.num_workers)
                    if b["pixels"] is not None]

        t_pipeline, batches = timed(pipeline)
        t_bare = (t_before + bare()) / 2
        order = np.argsort([p for positions, _ in batches for p in positions])
        features[precision] = torch.cat([f for _, f in batches]).numpy()[order]
        row[precision] = {"pipeline_images_per_s": count / t_pipeline, "bare_forward_images_per_s": count / t_bare,
                          "pipeline_vs_bare": t_bare / t_pipeline}
    row["amp_speedup"] = row["amp"]["bare_forward_images_per_s"] / row["fp32"]["bare_forward_images_per_s"]
    row["max_feature_diff"] = float(np.abs(features["fp32"] - features["amp"]).max())
    row["min_cosine_fp32_amp"] = float((features["fp32"] * features["amp"]).sum(axis=1).min())
    return row


def bench_photos(args, device: torch.device, folder: Path, amp: bool) -> dict:
    """Wall time of `search_photos.py` on a folder of photos, as a
    user runs it (model loading included): all pairs, then a DINOv2 shortlist of K per object;
    in fp32 and with --amp."""
    objects, photos, k = (2, 6, 2) if args.quick else (2, 40, 8)
    write_custom(folder / "photos", objects, photos, args.seed, size=tuple(args.image_size))
    torch.manual_seed(args.seed)
    model = build_sam2_model(args.sam2_cfg, None)
    model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data += 3.0
    torch.save({"model": model.state_dict()}, folder / "sam2.pt")
    row = {"objects": objects, "photos": photos, "shortlist_k": k}
    for precision, precision_flags in (("fp32", []), ("amp", ["--amp"] if amp else [])):
        for mode, extra in (("all_pairs", []), ("shortlist", ["--dinov2", dinov2_name(args, folder), "--shortlist",
                                                              str(k)])):
            out = folder / f"photos_{precision}_{mode}"
            command = [sys.executable, str(Path(__file__).with_name("search_photos.py")),
                       "--data_path", str(folder / "photos"), "--output_dir", str(out), "--sam2_cfg",
                       args.sam2_cfg, "--sam2_checkpoint", str(folder / "sam2.pt"), "--device", str(device),
                       *extra, *precision_flags]
            seconds, result = timed(subprocess.run, command, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"the {mode} run failed: {result.stderr[-2000:]}")
            metrics = json.loads((out / "metrics.json").read_text())
            row[f"{precision}_{mode}"] = {"seconds": seconds, "encoder_passes": metrics["run"]["encoder_passes"],
                                          "sam2_pairs": objects * (photos if mode == "all_pairs" else k)}
        row[f"{precision}_shortlist_speedup"] = row[f"{precision}_all_pairs"]["seconds"] / \
            row[f"{precision}_shortlist"]["seconds"]
    return row


def bench_photo_index(args, run, folder: Path) -> dict:
    """The DINOv2 part of three searches of one folder (see the module docstring)."""
    count = args.index_photos or (200 if args.quick else 2000)
    size = (96, 128)
    write_custom(folder / "index_photos", 2, count, args.seed, size=size)
    scan_s, data = timed(load_custom, folder / "index_photos")  # every search reads the folder (file headers)
    name = dinov2_name(args, folder)
    models = Models(None, {}, dinov2.load_dinov2(name, run.device, run.amp), name)
    options = SearchOptions(shortlist=50, index_chunk=256, dinov2_resolution=224, dinov2_preprocess="short_side_crop")
    one_object = lambda k: CustomData(data.root, {f"object_{k}": data.objects[f"object_{k}"]}, data.images)
    row = {"photos": count, "photo_size": list(size), "dinov2": "ViT-S/14" if args.dinov2 is None else args.dinov2,
           "resolution": options.dinov2_resolution, "vector_bytes": 2 * models.dinov2.config.hidden_size,
           "folder_scan_s": scan_s}
    for step, searched in (("first", one_object(0)), ("second", one_object(1))):
        seconds, (_, update) = timed(shortlists, searched, models, options, run)
        row[step] = {"seconds": seconds, **update}
    added = max(1, count // 100)
    rng = np.random.default_rng(args.seed + 7)
    for i in range(added):
        write_jpeg(data.root / "images" / "new" / f"{i:04d}.jpg", render_scene(rng, render_object(i), *size, scale=0.4)[0])
    seconds, (_, update) = timed(shortlists, load_custom(data.root), models, options, run)
    row["after_adding_1_percent"] = {"seconds": seconds, **update}
    embed_s = row["first"]["seconds"] / count  # nearly all of the first search: one forward per photo
    row["projection_100k"] = {"first_search_s": 100_000 * embed_s,
                              "second_search_s": row["second"]["seconds"] * 100_000 / count,
                              "folder_scan_s": scan_s * 100_000 / count,
                              "index_mb": 100_000 * row["vector_bytes"] / 2**20}
    row["second_vs_first"] = row["second"]["seconds"] / row["first"]["seconds"]
    return row


def _search(mode: str, folder: str, queries_path: str, k: int, connection) -> None:
    """Run one search in a fresh process; send (seconds, peak RSS in MB, indices)."""
    from utils.retrieval import shard_search, sharded_topk

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
    return {"database": size, "shard": shard, "queries": n_queries, "k": k,
            "sharded_s": sharded[0], "flat_s": flat[0],
            "sharded_peak_mb": sharded[1] - base[1], "flat_peak_mb": flat[1] - base[1],
            "one_shard_mb": shard * dim * 4 / 2**20, "database_mb": size * dim * 4 / 2**20,
            "identical": bool(np.array_equal(sharded[2], flat[2]))}


def main(args) -> dict:
    run = setup(args, distributed=False)
    device = run.device
    suites = list(SUITES) if "all" in args.suite else args.suite
    amp = amp_enabled(True, device)  # where bf16 is not native, "amp" runs in fp32 (and says so)
    machine = {**describe(device), "peak_fp32_flops": peak_matmul_flops(device, torch.float32),
               "peak_bf16_flops": peak_matmul_flops(device, torch.bfloat16)}
    results = {"machine": machine, "device": str(device), "amp_native": amp, "torch_threads": torch.get_num_threads(),
               "sam2_cfg": args.sam2_cfg, "quick": args.quick, "image_size": args.image_size}
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        folder = Path(tmp)
        if {"retrieval", "segmentation", "feed", "compile"} & set(suites):
            # one model instance per path, the same weights: the official SAM2VideoPredictor as sam2
            # builds it, and one for each engine precision (an engine adjusts its own instance)
            torch.manual_seed(args.seed)
            official = build_sam2_model(args.sam2_cfg, None, device)
            official.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data += 3.0  # objects found
            models = {"fp32": build_sam2_model(args.sam2_cfg, None, device),
                      "amp": build_sam2_model(args.sam2_cfg, None, device)}
            for model in models.values():
                model.load_state_dict(official.state_dict())
            engines = lambda: {"fp32": PseudoVideo(models["fp32"]), "amp": PseudoVideo(models["amp"], amp)}
            paths, masks = write_scenes(folder / "floor", 1, args.image_size, args.seed)
            floors = {p: measure_floor(engine, paths[0], masks[0]) for p, engine in engines().items()}
            results["floor"] = floors
            results["flops"] = phase_flops(official, paths[0], masks[0])
            if "retrieval" in suites:
                results["retrieval"] = bench_retrieval(args, engines, official, folder, floors)
                # this machine's speed drifts: the floor, measured again after the workloads,
                # must not be the one that makes our path look close to it
                results["floor_after"] = {p: measure_floor(engine, paths[0], masks[0])
                                          for p, engine in engines().items()}
            if "segmentation" in suites:
                results["segmentation"] = bench_segmentation(args, engines, official, folder)
            if "feed" in suites:
                results["feed"] = bench_feed(args, folder, official.image_size,
                                             {p: f["t_encode_s"] for p, f in floors.items()})
            if "compile" in suites:
                results["compile"] = bench_compile(args, device, official, paths, masks, amp, floors)
        if "features" in suites:
            results["features"] = bench_features(args, device, folder, amp)
        if "topk" in suites:
            (folder / "topk").mkdir()
            results["topk"] = bench_topk(args, folder / "topk")
        if "photos" in suites:
            results["photos"] = bench_photos(args, device, folder, amp)
        if "photo_index" in suites:
            results["photo_index"] = bench_photo_index(args, run, folder)
    return finish(args, results, report(results), run)


def share_of_peak(flops: int, seconds: float, peak: float) -> str:
    return f"{flops / seconds / 1e9:.0f} GFLOP/s = {flops / seconds / peak:.0%} of peak"


def report(results: dict) -> str:
    machine = results["machine"]
    rows = [["peak matmul (GFLOP/s)", f"{machine['peak_fp32_flops'] / 1e9:.0f}", f"{machine['peak_bf16_flops'] / 1e9:.0f}",
             f"{machine['peak_bf16_flops'] / machine['peak_fp32_flops']:.2f}x", summary(machine)]]
    for name in ("floor", "floor_after"):
        if name in results:
            f, flops = results[name], results["flops"]
            shares = "; ".join(f"{phase} {flops[phase] / 1e9:.0f} GFLOP: fp32 "
                               f"{share_of_peak(flops[phase], f['fp32'][f't_{phase}_s'], machine['peak_fp32_flops'])}"
                               f", amp {share_of_peak(flops[phase], f['amp'][f't_{phase}_s'], machine['peak_bf16_flops'])}"
                               for phase in ("encode", "pair"))
            rows.append([f"{name.replace('_', ' ')}: t_encode | t_pair (s)",
                         f"{f['fp32']['t_encode_s']:.3f} | {f['fp32']['t_pair_s']:.3f}",
                         f"{f['amp']['t_encode_s']:.3f} | {f['amp']['t_pair_s']:.3f}",
                         f"{f['fp32']['t_encode_s'] / f['amp']['t_encode_s']:.2f}x | "
                         f"{f['fp32']['t_pair_s'] / f['amp']['t_pair_s']:.2f}x", shares])
    for name, r in results.get("retrieval", {}).items():
        rows.append([f"{name} {r['pairs']} pairs: s/pair (official {r['official_s_per_pair']:.2f}, "
                     f"extrapolated from {r['official_sampled_pairs']})",
                     f"{r['fp32']['s_per_pair']:.3f}", f"{r['amp']['s_per_pair']:.3f}", f"{r['amp_speedup']:.2f}x",
                     f"fp32 {r['fp32']['speedup_vs_official']:.2f}x official, {r['fp32']['vs_floor']:.2f}x floor; "
                     f"amp {r['amp']['speedup_vs_official']:.2f}x official, {r['amp']['vs_floor']:.2f}x floor; "
                     f"{r['fp32']['encoder_passes']} passes / {r['distinct_images']} images; max |d score| "
                     f"{r['max_score_diff']:.4f}, ties {r['tied_share_fp32']:.1%} | {r['tied_share_amp']:.1%}"])
    if "segmentation" in results:
        r = results["segmentation"]
        rows.append([f"segmentation: s/target (official {r['official_s_per_target']:.2f})",
                     f"{r['fp32']['s_per_target']:.3f}", f"{r['amp']['s_per_target']:.3f}", f"{r['amp_speedup']:.2f}x",
                     f"fp32 {r['fp32']['speedup_vs_official']:.2f}x official; masks agree on "
                     f"{r['mask_agreement']:.2%} of pixels; max |d score| {r['max_score_diff']:.4f}"])
    if "feed" in results:
        r = results["feed"]
        for name in ("scene", "photo"):
            rates = " | ".join(f"{w} workers {rate:.1f}" for w, rate in r[name]["images_per_s"].items())
            rows.append([f"feed, {r[name]['size'][0]} x {r[name]['size'][1]} JPEG: img/s", rates, "", "",
                         "the model encodes {:.2f} img/s in fp32, {:.2f} with amp".format(
                             r["encode_images_per_s"]["fp32"], r["encode_images_per_s"]["amp"])])
    if "compile" in results:
        r = results["compile"]
        cells = {p: f"{r[p]['t_encode_s']:.3f} | {r[p]['t_pair_s']:.3f}" for p in ("fp32", "amp")}
        notes = "; ".join(f"{p}: compiled in {r[p]['compile_s']:.0f} s, encode {r[p]['encode_speedup']:.2f}x, pair "
                          f"{r[p]['pair_speedup']:.2f}x eager, " + (f"pays after {r[p]['pays_after_targets']:.0f} targets"
                                                                    if r[p]['pays_after_targets'] else "never pays here")
                          for p in ("fp32", "amp"))
        rows.append(["--compile: t_encode | t_pair (s)", cells["fp32"], cells["amp"], "", notes])
    if "features" in results:
        r = results["features"]
        rows.append([f"features @{r['resolution']}: img/s pipeline | bare",
                     f"{r['fp32']['pipeline_images_per_s']:.2f} | {r['fp32']['bare_forward_images_per_s']:.2f}",
                     f"{r['amp']['pipeline_images_per_s']:.2f} | {r['amp']['bare_forward_images_per_s']:.2f}",
                     f"{r['amp_speedup']:.2f}x",
                     f"pipeline/bare fp32 {r['fp32']['pipeline_vs_bare']:.2f}, amp {r['amp']['pipeline_vs_bare']:.2f}; "
                     f"max |d feature| {r['max_feature_diff']:.4f}, min cos {r['min_cosine_fp32_amp']:.4f}"])
    if "topk" in results:
        r = results["topk"]
        rows.append([f"top-K {r['database']:,} x 384: s sharded | flat", f"{r['sharded_s']:.2f} | {r['flat_s']:.2f}",
                     "", "", f"peak MB {r['sharded_peak_mb']:.0f} vs {r['flat_peak_mb']:.0f} (one shard "
                     f"{r['one_shard_mb']:.0f}); identical: {r['identical']}"])
    if "photos" in results:
        r = results["photos"]
        for mode in ("all_pairs", "shortlist"):
            fp32, amp = r[f"fp32_{mode}"], r[f"amp_{mode}"]
            rows.append([f"your photos, {r['objects']} objects x {r['photos']} photos, "
                         f"{'all pairs' if mode == 'all_pairs' else 'shortlist of ' + str(r['shortlist_k'])}: s",
                         f"{fp32['seconds']:.1f}", f"{amp['seconds']:.1f}", f"{fp32['seconds'] / amp['seconds']:.2f}x",
                         f"{fp32['sam2_pairs']} SAM2 pairs, {fp32['encoder_passes']} encoder passes (model loading "
                         "included)"])
    if "photo_index" in results:
        r = results["photo_index"]
        for step in ("first", "second", "after_adding_1_percent"):
            rows.append([f"photo index, {r['photos']} photos of {r['photo_size'][0]} x {r['photo_size'][1]}: "
                         f"{step.replace('_', ' ')} search, s", f"{r[step]['seconds']:.2f}", "", "",
                         f"{r[step]['added']} photos embedded, {r[step]['kept']} kept, {r[step]['removed']} removed"])
        p = r["projection_100k"]
        rows.append(["photo index, projected to 100,000 photos", "", "", "",
                     f"first search {p['first_search_s'] / 3600:.1f} h, then {p['second_search_s']:.1f} s per search "
                     f"(second/first here: {r['second_vs_first']:.1%}), plus {p['folder_scan_s']:.0f} s reading the "
                     f"folder; index {p['index_mb']:.0f} MB (float16)"])
    return format_table(["measure", "fp32", "amp", "amp speed-up", "notes"], rows) + \
        f"\nmachine: {summary(machine)}; device {results['device']}"


if __name__ == "__main__":
    run_cli(main, get_args_parser())
