"""ILIAS second stage: re-rank each query's first-stage top-k by the SAM2 pseudo-video score.

    python sam2_reranking.py --k 100 --topk_dir outputs/ilias --features_dir outputs/ilias/features \
        --images_dir outputs/ilias/images --output_dir outputs/ilias/rerank \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    torchrun --nproc_per_node 4 sam2_reranking.py ...

Each query (prompted with its box, or the box filled as a mask) is frame 0 of a pseudo-video and
each of its first --k candidates the target; the target's SAM2 score (`--score`) re-ranks them.
The final list is the re-ranked top-k followed by the first-stage ranks k+1..K, so mAP@1k stays
the official metric. Work goes by candidate image, in chunks: each distinct image passes through
the image encoder once, each query's memory is built once, pairs are batched; every finished
chunk is saved (<output_dir>/parts/), so a killed run resumes, and under torchrun the chunks are
split across ranks. Writes reranked_indices.npy (queries x K, int64), reranked_scores.npy
(queries x k, float32) and metrics.json (first_stage and reranked). Before: topk_candidates_ilias.py,
extract_images.py, extract_candidates.py; --head_checkpoint from train_revisitop.py.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from utils.cli import (batched, check_positive, finish, format_table, pair_batch_size,
                       progress, set_seed)
from utils.dist import barrier, init_distributed, sum_across_ranks
from utils.errors import CliParser, UserError, run_cli
from utils.feature_store import load_topk, shard_record
from utils.io import save_json, save_npy, save_png
from utils.loaders.ilias import image_file, object_id, open_extracted, union_box
from utils.metrics import ilias_metrics
from utils.pseudo_video import SCORES, PseudoVideo
from utils.sam2_model import add_sam2_args, build_sam2_model, load_head, resolve_device
from utils.vis import ranking_strip, stack_rows, with_box

RECALL_KS = (1, 5, 10, 100)
SHOWN = 10


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sam2_args(parser)
    parser.add_argument("--k", type=int, default=100, help="first-stage candidates re-ranked per query")
    parser.add_argument("--topk_dir", default="outputs/ilias")
    parser.add_argument("--features_dir", default="outputs/ilias/features")
    parser.add_argument("--images_dir", default="outputs/ilias/images")
    parser.add_argument("--output_dir", default="outputs/ilias/rerank")
    parser.add_argument("--query_prompt", choices=["box", "box_mask"], default="box")
    parser.add_argument("--score", choices=SCORES, default="iou")
    parser.add_argument("--head_checkpoint", default=None, help="score head from train_revisitop.py")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="pairs per forward pass (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--chunk_size", type=int, default=512, help="candidate images per saved part")
    parser.add_argument("--visualize", type=int, default=0, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def load_inputs(args) -> dict:
    """Top-K lists, keys and query boxes, checked against each other."""
    features_dir = Path(args.features_dir)
    topk = load_topk(Path(args.topk_dir), features_dir, args.k)
    records = {split: [shard_record(features_dir / split, entry) for entry in manifest["shards"]]
               for split, manifest in topk["manifests"].items()}
    keys = {split: [key for record in split_records for key in record["keys"]]
            for split, split_records in records.items()}
    return {"topk": topk["indices"], "topk_scores": topk["scores"], "meta": topk["meta"],
            "query_keys": keys["queries"], "db_keys": keys["db"],
            "database_keys": keys["db"] + keys.get("distractors", []),
            "boxes": [box for record in records["queries"] for box in record["boxes"]]}


def check_images(images_dir: Path, query_keys: list[str], candidate_keys: list[str], k: int) -> None:
    """Every image the re-ranking reads must be on disk: a missing one is never a zero score."""
    missing = [key for key in query_keys + candidate_keys if not image_file(images_dir, key).is_file()]
    if missing:
        raise UserError(f"{len(missing)} images are missing (e.g. {missing[0]})", str(images_dir),
                        f"run extract_images.py and extract_candidates.py --k {k} into this --images_dir")


def run_settings(args, meta: dict) -> dict:
    return {"k": args.k, "score": args.score, "query_prompt": args.query_prompt,
            "sam2_cfg": args.sam2_cfg, "sam2_checkpoint": args.sam2_checkpoint,
            "head_checkpoint": args.head_checkpoint, "chunk_size": args.chunk_size, "topk": meta}


def check_parts(parts_dir: Path, settings: dict) -> None:
    """Saved parts of an earlier run are reused only if it had the same settings."""
    path = parts_dir / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(settings)):
        raise UserError("this --output_dir holds parts of a run with other settings", str(path),
                        "use another --output_dir, or delete its parts/ folder")


class QueryMemories:
    """Each query's reference memory, built once, on first use."""

    def __init__(self, engine: PseudoVideo, images_dir: Path, data: dict, prompt: str):
        self.engine, self.images_dir, self.data, self.prompt = engine, images_dir, data, prompt
        self.memories = {}

    def __getitem__(self, q: int):
        if q not in self.memories:
            key = self.data["query_keys"][q]
            image = open_extracted(self.images_dir, key, "queries")
            frame = self.engine.prepare(image, image_id=f"query:{key}")
            x1, y1, x2, y2 = union_box(self.data["boxes"][q], image.width, image.height)
            if self.prompt == "box":
                self.memories[q] = self.engine.encode_reference([frame], boxes=[[x1, y1, x2, y2]])
            else:
                mask = np.zeros((frame.height, frame.width), bool)
                mask[y1:y2, x1:x2] = True
                self.memories[q] = self.engine.encode_reference([frame], masks=[mask])
            self.engine.forget([f"query:{key}"])
        return self.memories[q]


def score_chunk(args, engine: PseudoVideo, memories: QueryMemories, data: dict, candidates: np.ndarray,
                topk: np.ndarray) -> np.ndarray:
    """Scores of the chunk's pairs, in the row-major order of np.nonzero(isin(topk, candidates)).
    Candidate images are encoded in batches, and each batch is scored with all its pairs."""
    rows, cols = np.nonzero(np.isin(topk, candidates))
    scores = np.zeros(len(rows), np.float32)
    by_candidate = {}
    for p, candidate in enumerate(topk[rows, cols]):
        by_candidate.setdefault(int(candidate), []).append(p)
    for group in batched(list(candidates), args.batch_size):
        frames = {int(c): engine.prepare(open_candidate(Path(args.images_dir), data, c), image_id=f"db:{c}")
                  for c in group}
        pairs = [p for c in group for p in by_candidate[int(c)]]
        for batch in batched(pairs, args.batch_size):
            predicted = engine.score_pairs([memories[rows[p]] for p in batch],
                                           [frames[int(topk[rows[p], cols[p]])] for p in batch], with_masks=False)
            scores[batch] = predicted.score(args.score).numpy()
        engine.forget([f"db:{c}" for c in group])
    return scores


def open_candidate(images_dir: Path, data: dict, index: int):
    """A database image by global index: ILIAS-core db images first, then distractors."""
    split = "db" if index < len(data["db_keys"]) else "distractors"
    return open_extracted(images_dir, data["database_keys"][index], split)


def list_scores(reranked_scores: np.ndarray, topk_scores: np.ndarray) -> np.ndarray:
    """Scores that order the final lists as they are: the SAM2 scores of the re-ranked top-k,
    lifted above every first-stage score, then the first-stage scores of ranks k+1..K (float64:
    the lift is exact, so no two different scores become equal)."""
    k = reranked_scores.shape[1]
    top, rest = reranked_scores.astype(np.float64), topk_scores[:, k:].astype(np.float64)
    lift = (rest.max() - top.min() + 1.0) if rest.size else 0.0
    return np.concatenate([top + lift, rest], axis=1)


def merge(args, parts_dir: Path, topk: np.ndarray, chunks: list[np.ndarray]):
    """Re-ranked lists: the top-k by SAM2 score (ties: first-stage order), then ranks k+1..K."""
    top = topk[:, :args.k]
    pair_scores = np.zeros(top.shape, np.float32)
    for c, candidates in enumerate(chunks):
        rows, cols = np.nonzero(np.isin(top, candidates))
        pair_scores[rows, cols] = np.load(parts_dir / f"chunk_{c:05d}.npy")
    order = np.lexsort((np.broadcast_to(np.arange(args.k), top.shape), -pair_scores), axis=1)
    reranked = np.concatenate([np.take_along_axis(top, order, axis=1), topk[:, args.k:]], axis=1)
    return reranked, np.take_along_axis(pair_scores, order, axis=1)


def visualize(args, data: dict, first: np.ndarray, reranked: np.ndarray) -> None:
    images_dir, output_dir = Path(args.images_dir), Path(args.output_dir)
    db_objects = [object_id(k) for k in data["db_keys"]]
    for q in range(min(args.visualize, len(first))):
        image = open_extracted(images_dir, data["query_keys"][q], "queries")
        query = with_box(image, union_box(data["boxes"][q], image.width, image.height))
        obj = object_id(data["query_keys"][q])
        rows = []
        shown = min(SHOWN, args.k)  # ranks past k may be distractors that were not extracted
        for ranking in (first[q, :shown], reranked[q, :shown]):
            results = [open_candidate(images_dir, data, i) for i in ranking]
            positives = [i < len(db_objects) and db_objects[i] == obj for i in ranking]
            rows.append(ranking_strip(query, results, positives))
        save_png(output_dir / "vis" / f"query_{q:04d}.png", stack_rows(rows))


def main(args) -> dict:
    check_positive(args.chunk_size, "--chunk_size")
    set_seed(args.seed)
    data = load_inputs(args)
    topk, output_dir = data["topk"], Path(args.output_dir)
    candidates = np.unique(topk[:, :args.k])
    check_images(Path(args.images_dir), data["query_keys"], [data["database_keys"][c] for c in candidates], args.k)
    device = resolve_device(args.device)
    args.batch_size = pair_batch_size(args.batch_size, device)
    rank, world = init_distributed(device)
    model = build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device)
    if args.head_checkpoint:
        load_head(model, args.head_checkpoint)
    engine = PseudoVideo(model, amp=args.amp)
    memories = QueryMemories(engine, Path(args.images_dir), data, args.query_prompt)

    parts_dir = output_dir / "parts"
    settings = run_settings(args, data["meta"])
    check_parts(parts_dir, settings)
    barrier()
    if rank == 0:
        save_json(parts_dir / "settings.json", settings)
    chunks = [candidates[i:i + args.chunk_size] for i in range(0, len(candidates), args.chunk_size)]
    mine = [c for c in range(rank, len(chunks), world) if not (parts_dir / f"chunk_{c:05d}.npy").is_file()]
    for c in progress(mine, desc=f"candidate chunks (rank {rank})", unit="chunk"):
        save_npy(parts_dir / f"chunk_{c:05d}.npy", score_chunk(args, engine, memories, data, chunks[c], topk[:, :args.k]))
    passes = sum_across_ranks(engine.encoder_passes)
    barrier()
    if rank != 0:
        return {}

    reranked, reranked_scores = merge(args, parts_dir, topk, chunks)
    save_npy(output_dir / "reranked_indices.npy", reranked.astype(np.int64))
    save_npy(output_dir / "reranked_scores.npy", reranked_scores)
    query_objects = [object_id(k) for k in data["query_keys"]]
    db_objects = [object_id(k) for k in data["db_keys"]]
    final_scores = list_scores(reranked_scores, data["topk_scores"])
    metrics = {name: ilias_metrics(query_objects, db_objects, ranked, scores, map_ks=(1000, 100), recall_ks=RECALL_KS)
               for name, ranked, scores in (("first_stage", topk, data["topk_scores"]),
                                            ("reranked", reranked, final_scores))}
    metrics.update({"k": args.k, "score": args.score, "encoder_passes": passes,
                    "distinct_images": len(data["query_keys"]) + len(candidates)})
    if args.visualize:
        visualize(args, data, topk, reranked)
    columns = ["map@1k", "map@100", *(f"recall@{r}" for r in RECALL_KS)]
    rows = [["first stage (DINOv2)", *(metrics["first_stage"][c] for c in columns)],
            [f"re-ranked top-{args.k} (SAM2 {args.score})", *(metrics["reranked"][c] for c in columns)]]
    table = format_table(["ILIAS", "mAP@1k", "mAP@100", *(f"R@{r}" for r in RECALL_KS)], rows)
    table += (f"\n{len(data['query_keys'])} queries x {args.k} candidates; image encoder passes: {passes}"
              f" (distinct images: {metrics['distinct_images']})")
    return finish(output_dir, metrics, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
