"""ILIAS second stage: re-rank each query's first-stage candidates by the SAM2 pseudo-video score.

    python sam2_reranking.py --rerank_depth 100 --topk_dir outputs/ilias --features_dir outputs/ilias/features \
        --images_dir outputs/ilias/images --output_dir outputs/ilias/rerank \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt
    torchrun --nproc_per_node 4 sam2_reranking.py ...

Each query (the whole image, prompted with its box, or the box filled as a mask) is frame 0 of a
pseudo-video and each of its first --rerank_depth (k) candidates the target; the target's SAM2
score (`--score`) re-ranks them. The final list is the re-ranked top-k followed by the
first-stage ranks k+1..K, so mAP@1k stays the official metric. Work goes by candidate image, in
chunks, through the pair scheduler (utils/pair_scoring.py): each distinct image passes through
the image encoder once, each query's memory is built once; every finished chunk is saved
(<output_dir>/parts/), so a killed run resumes, and under torchrun the chunks are split across
ranks. Writes reranked_indices.npy (queries x K, int64), reranked_scores.npy (queries x k,
float32) and metrics.json (first_stage and reranked). Before: topk_candidates_ilias.py,
extract_images.py, extract_candidates.py; --head_checkpoint from train_revisitop.py.
"""
from pathlib import Path

import numpy as np
from utils.cli import (CliParser, add_chunk_arg, add_ilias_dir_args, add_output_args, add_rerank_depth_arg,
                       add_sam2_args, add_visualize_arg, finish, format_table, metric_row, run_cli, sam2_run, setup)
from utils.errors import UserError
from utils.ilias_store import (OUTPUTS, extracted_size, image_file, load_topk, object_id, open_extracted,
                               split_records, union_box)
from utils.io import save_npy, save_png
from utils.loops import batched
from utils.metrics import ilias_metrics
from utils.pair_scoring import chunk_scores
from utils.prompts import QUERY_PROMPTS, ReferenceFrame, query_prompt
from utils.pseudo_video import SCORES
from utils.sam2_run import Head, chunk_size
from utils.vis import ranking_strip, stack_rows, with_box

COLUMNS = ["map@1k", "map@100", "recall@1", "recall@5", "recall@10", "recall@100"]
SHOWN = 10


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_sam2_args(parser)
    add_rerank_depth_arg(parser)
    add_ilias_dir_args(parser, "topk", "features", "images")
    parser.add_argument("--query_prompt", choices=QUERY_PROMPTS, default="box",
                        help="the whole query image with its box, or with the box filled as a mask (as training)")
    parser.add_argument("--score", choices=SCORES, default="iou")
    parser.add_argument("--head_checkpoint", default=None, help="score head from train_revisitop.py")
    add_chunk_arg(parser, "candidate images")
    add_visualize_arg(parser, "the first-stage and re-ranked top-10 of the first N queries")
    add_output_args(parser, f"{OUTPUTS}/rerank")
    return parser


class IliasImages:
    """Image ids of the re-ranking (`query:<key>`, `db:<global index>`) and how to open them: as
    stage 1 decoded them (utils/ilias_store.py)."""

    def __init__(self, images_dir: Path, query_keys: list[str], database_keys: list[str], num_db: int):
        self.images_dir, self.query_keys, self.database_keys, self.num_db = images_dir, query_keys, database_keys, num_db

    def query(self, q: int) -> str:
        return f"query:{q}"

    def candidate(self, index: int) -> str:
        return f"db:{index}"

    def _key_and_split(self, image_id: str) -> tuple[str, str]:
        kind, number = image_id.split(":")
        if kind == "query":
            return self.query_keys[int(number)], "queries"
        index = int(number)
        return self.database_keys[index], "db" if index < self.num_db else "distractors"

    def open(self, image_id: str):
        return open_extracted(self.images_dir, *self._key_and_split(image_id))

    def size(self, image_id: str) -> tuple[int, int]:
        """(height, width) as decoded, from the file header."""
        return extracted_size(self.images_dir, *self._key_and_split(image_id))

    def check(self, candidates: np.ndarray, depth: int) -> None:
        """Every image the re-ranking reads must be on disk: a missing one is never a zero score."""
        keys = self.query_keys + [self.database_keys[c] for c in candidates]
        missing = [key for key in keys if not image_file(self.images_dir, key).is_file()]
        if missing:
            raise UserError(f"{len(missing)} images are missing (e.g. {missing[0]})", str(self.images_dir),
                            f"run extract_images.py and extract_candidates.py --rerank_depth {depth} into this --images_dir")


def query_references(images: IliasImages, boxes: list, prompt: str) -> dict:
    """Each query's reference: its whole image prompted with the union of its boxes (clamped to
    the image), as a box or as the box filled as a mask."""
    references = {}
    for q, query_boxes in enumerate(boxes):
        height, width = images.size(images.query(q))
        box = union_box(query_boxes, width, height)
        references[q] = [ReferenceFrame(images.query(q), query_prompt(box, prompt))]
    return references


def chunk_pairs(top: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) positions in the top-k lists whose candidate is in `candidates`, row by
    row: the order of a chunk's pairs, for scoring and for merging alike."""
    return np.nonzero(np.isin(top, candidates))


def merge(top: np.ndarray, rest: np.ndarray, chunks: list[np.ndarray], chunk_scores_: list[np.ndarray]):
    """Re-ranked lists: the top-k by SAM2 score (ties: first-stage order), then ranks k+1..K.
    Returns the lists and the re-ranked top-k's scores."""
    pair_scores = np.zeros(top.shape, np.float32)
    for candidates, scores in zip(chunks, chunk_scores_):
        pair_scores[chunk_pairs(top, candidates)] = scores
    order = np.lexsort((np.broadcast_to(np.arange(top.shape[1]), top.shape), -pair_scores), axis=1)
    reranked = np.concatenate([np.take_along_axis(top, order, axis=1), rest], axis=1)
    return reranked, np.take_along_axis(pair_scores, order, axis=1)


def list_scores(reranked_scores: np.ndarray, topk_scores: np.ndarray) -> np.ndarray:
    """Scores that order the final lists as they are (what the official evaluator needs): the SAM2
    scores of the re-ranked top-k, lifted above every first-stage score, then the first-stage
    scores of ranks k+1..K (float64: the lift is exact, so no two different scores become equal)."""
    k = reranked_scores.shape[1]
    top, rest = reranked_scores.astype(np.float64), topk_scores[:, k:].astype(np.float64)
    lift = (rest.max() - top.min() + 1.0) if rest.size else 0.0
    return np.concatenate([top + lift, rest], axis=1)


def visualize(output_dir: Path, images: IliasImages, boxes: list, db_objects: list, first: np.ndarray,
              reranked: np.ndarray, count: int, depth: int) -> None:
    for q in range(min(count, len(first))):
        image = images.open(images.query(q))
        query = with_box(image, union_box(boxes[q], image.width, image.height))
        obj = object_id(images.query_keys[q])
        shown = min(SHOWN, depth)  # ranks past k may be distractors that were not extracted
        rows = []
        for ranked in (first[q, :shown], reranked[q, :shown]):
            results = [images.open(images.candidate(i)) for i in ranked]
            rows.append(ranking_strip(query, results, [i < len(db_objects) and db_objects[i] == obj for i in ranked]))
        save_png(output_dir / "vis" / f"query_{q:04d}.png", stack_rows(rows))


def main(args) -> dict:
    run = setup(args)
    features_dir, output_dir, depth = Path(args.features_dir), Path(args.output_dir), args.rerank_depth
    topk = load_topk(Path(args.topk_dir), features_dir, depth)
    manifests = topk["manifests"]
    query_keys, boxes = split_records(features_dir, "queries", manifests["queries"])
    db_keys, _ = split_records(features_dir, "db", manifests["db"])
    distractor_keys = split_records(features_dir, "distractors", manifests["distractors"])[0] \
        if "distractors" in manifests else []
    images = IliasImages(Path(args.images_dir), query_keys, db_keys + distractor_keys, len(db_keys))
    top, rest = topk["indices"][:, :depth], topk["indices"][:, depth:]
    candidates = np.unique(top)
    images.check(candidates, depth)

    head = Head(args.head_checkpoint, args.score, args.query_prompt) if args.head_checkpoint else None
    sam2 = sam2_run(args, run, head)
    size = chunk_size(args.chunk_size, len(candidates))
    parts = sam2.parts(output_dir / "parts", rerank_depth=depth, query_prompt=args.query_prompt, chunk_size=size,
                       topk=topk["meta"])
    chunks = list(batched(candidates, size))
    chunk_pair_lists = [[(q, images.candidate(top[q, col])) for q, col in zip(*chunk_pairs(top, chunk))]
                        for chunk in chunks]
    sam2.score_in_parts(parts, chunk_pair_lists, query_references(images, boxes, args.query_prompt), images.open,
                        desc="candidates")
    work = sam2.work()
    if not run.is_main:
        return {}

    reranked, reranked_scores = merge(top, rest, chunks, chunk_scores(parts, chunks, args.score))
    save_npy(output_dir / "reranked_indices.npy", reranked.astype(np.int64))
    save_npy(output_dir / "reranked_scores.npy", reranked_scores)
    query_objects, db_objects = [object_id(k) for k in query_keys], [object_id(k) for k in db_keys]
    metrics = {name: ilias_metrics(query_objects, db_objects, ranked, scores, map_ks=(1000, 100),
                                   recall_ks=(1, 5, 10, 100))
               for name, ranked, scores in (("first_stage", topk["indices"], topk["scores"]),
                                            ("reranked", reranked, list_scores(reranked_scores, topk["scores"])))}
    metrics.update({"rerank_depth": depth, "score": args.score, "distinct_images": len(query_keys) + len(candidates)})
    if args.visualize:
        visualize(output_dir, images, boxes, db_objects, topk["indices"], reranked, args.visualize, depth)
    rows = [metric_row("first stage (DINOv2)", metrics["first_stage"], COLUMNS),
            metric_row(f"re-ranked top-{depth} (SAM2 {args.score})", metrics["reranked"], COLUMNS)]
    table = format_table(["ILIAS", "mAP@1k", "mAP@100", "R@1", "R@5", "R@10", "R@100"], rows)
    table += (f"\n{len(query_keys)} queries x {depth} candidates; image encoder passes: {work['encoder_passes']}"
              f" (distinct images: {metrics['distinct_images']})")
    return finish(args, metrics, table, run, **work)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
