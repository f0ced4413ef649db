"""Every metric of the project, with its official definition in the docstring."""
from dataclasses import astuple, dataclass, fields

import numpy as np
from PIL import Image
from scipy import ndimage

PDM_CROP_SIZE = 512  # PDM measures every PerMIRS mask on a 512 x 512 square crop
PDM_MIN_CROP_FRACTION = 0.005  # PDM: masks under 0.5% of that crop are too small to count


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts |pred & gt| and |pred | gt| of two boolean masks of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def ratio(inter: int, union: int) -> float:
    """intersection / union, 1.0 when both masks are empty (nothing to get wrong)."""
    return inter / union if union else 1.0


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|pred & gt| / |pred | gt|; 1.0 when both masks are empty."""
    return ratio(*intersection_union(pred, gt))


def mask_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """The inner boundary band of a mask, as in Boundary IoU (Cheng et al., CVPR 2021):
    the mask minus its erosion by a 3x3 square applied d times, d = round(ratio x image
    diagonal) (at least 1), with pixels outside the image counted as background. Computed in one
    pass: a pixel survives d erosions iff its chessboard distance to the background is over d."""
    mask = mask.astype(bool)
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height ** 2 + width ** 2))))
    padded = np.pad(mask, 1)  # the outside of the image is background
    distance = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return mask & (distance <= dilation)


def boundary_intersection_union(pred: np.ndarray, gt: np.ndarray,
                                dilation_ratio: float = 0.02) -> tuple[int, int]:
    """Boundary IoU's counts: intersection and union of the two boundary bands."""
    return intersection_union(mask_boundary(pred, dilation_ratio), mask_boundary(gt, dilation_ratio))


@dataclass(frozen=True)
class MaskCounts:
    """Pixel counts of predicted masks against their ground truth, summed over targets: every
    segmentation number is a ratio of two of them. `intersection`, `union` and the boundary
    bands' (Boundary IoU) where the protocol measures; `frame_*` on whole frames, where the
    protocol measures on a crop of them (PerMIS with full frames as inputs; else 0)."""
    intersection: int = 0
    union: int = 0
    boundary_intersection: int = 0
    boundary_union: int = 0
    frame_intersection: int = 0
    frame_union: int = 0
    targets: int = 0

    def __add__(self, other: "MaskCounts") -> "MaskCounts":
        return MaskCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def to_array(self) -> np.ndarray:
        return np.array(astuple(self), np.int64)

    @classmethod
    def from_array(cls, values) -> "MaskCounts":
        if len(values) != len(fields(cls)):
            raise ValueError(f"{len(values)} counts, expected {len(fields(cls))}")
        return cls(*(int(v) for v in values))


def mask_counts(pred: np.ndarray, gt: np.ndarray, crop_box=None) -> MaskCounts:
    """The counts of one target. With `crop_box` (PerMIS on full frames), the protocol's counts
    are taken on PDM's crop of prediction and ground truth (`pdm_crop`, the same box for both),
    and the `frame_*` counts on the whole frames."""
    frame = intersection_union(pred, gt) if crop_box is not None else (0, 0)
    if crop_box is not None:
        pred, gt = pdm_crop(pred, crop_box), pdm_crop(gt, crop_box)
    return MaskCounts(*intersection_union(pred, gt), *boundary_intersection_union(pred, gt), *frame, targets=1)


def perseg_miou(per_object: dict[str, tuple[int, int]]) -> float:
    """PerSeg mIoU (PerSAM's `eval_miou.py`): for each object, the sum of intersections over the
    sum of unions of its non-reference images; mIoU is the mean over objects. Input: object ->
    (sum of intersections, sum of unions). Used for mIoU and, with boundary counts, bIoU."""
    return float(np.mean([ratio(inter, union) for inter, union in per_object.values()]))


def global_iou(per_object: dict[str, tuple[int, int]]) -> float:
    """PerMIS mIoU (PDM's `pdm_permis.py`): one global sum of intersections over sum of unions,
    all targets."""
    return ratio(sum(i for i, _ in per_object.values()), sum(u for _, u in per_object.values()))


def pdm_crop_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The square crop PDM (`pdm_permis.py`, `pdm_permir.py`: `center_crop`) measures a PerMIRS
    frame on, as (left, top, right, bottom) in pixels, possibly fractional: the centred square of
    side min(H, W); if the mask's x-range [x_min, x_max) leaves it, the square is shifted (right
    edge first moved by as much as the left one, then the reverse) to start at x_min or end at
    x_max. An empty mask keeps the centred square (PDM has no box for it)."""
    height, width = mask.shape
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    right, bottom = (width + side) / 2, (height + side) / 2
    columns = np.flatnonzero(mask.any(axis=0))
    if len(columns):
        x_min, x_max = int(columns[0]), int(columns[-1]) + 1
        if x_min < left:
            right, left = right - (left - x_min), x_min
        if x_max > right:
            left, right = left + (x_max - right), x_max
    return left, top, right, bottom


def pdm_crop(mask: np.ndarray, box: tuple[float, float, float, float], size: int = PDM_CROP_SIZE) -> np.ndarray:
    """A mask seen as PDM sees it: as a 0/1 uint8 image cut to `box` by PIL (which rounds the
    edges) and resized to size x size with PIL's default filter for it (bicubic), nonzero = in."""
    image = Image.fromarray(mask.astype(np.uint8)).crop(box)
    return np.asarray(image.resize((size, size), Image.BICUBIC)) > 0


def pdm_crop_fraction(mask: np.ndarray) -> float:
    """The share of PDM's 512 x 512 crop (`pdm_crop_box`) the mask covers: PDM's mask size."""
    return float(pdm_crop(mask, pdm_crop_box(mask)).mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one query over the whole gallery, as scikit-learn's `average_precision_score` (the
    call of PDM's `pdm_permir.py`): sum over score thresholds of (recall_k - recall_{k-1}) x
    precision_k, where tied scores form one threshold (no interpolation). 0 when the query has no
    positive."""
    positives = np.asarray(positives, bool)
    if not positives.any():
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    return _tied_precision_sum(positives[order], np.asarray(scores)[order]) / positives.sum()


def _tied_precision_sum(ranked_hits: np.ndarray, ranked_scores: np.ndarray) -> float:
    """Sum over the hits of the precision at their threshold, where a run of equal scores is one
    threshold: every hit of the run gets the precision at the run's end (scikit-learn's rule)."""
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked_scores) - 1]
    true_positives = np.cumsum(ranked_hits)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    return float(np.sum(np.diff(np.r_[0, true_positives]) * precision))


def sort_by_score(scores: np.ndarray) -> np.ndarray:
    """Gallery indices by decreasing score per query row; ties broken by the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")


def retrieval_metrics(scores: np.ndarray, positives: np.ndarray, ks=(1, 5, 10, 50)) -> dict:
    """PerMIR metrics in percent, for a queries x gallery score matrix and a boolean matrix of
    positives: `map` (mean over queries of `average_precision` over the whole gallery) and
    `recall@k` (the share of queries with a positive among their first k results; equal scores
    are ordered by gallery index)."""
    metrics = {"map": 100 * float(np.mean([average_precision(s, p) for s, p in zip(scores, positives)]))}
    ranked_positives = np.take_along_axis(positives, sort_by_score(scores), axis=1)
    for k in ks:
        metrics[f"recall@{k}"] = 100 * float(np.mean(ranked_positives[:, :k].any(axis=1)))
    return metrics


def ilias_average_precision(ranked_hits: np.ndarray, ranked_scores: np.ndarray, num_positives: int,
                            k: int = 1000) -> float:
    """ILIAS AP@k of one query (ILIAS `evaluation/src/dataset.py`, `_compute_AP`): the ranked list
    is cut at k; AP = scikit-learn's `average_precision_score` of the hits in the top k against
    their scores (equal scores form one threshold), times (hits in the top k) / min(k, number of
    positives). Without ties: the sum over the hits of the precision at that hit, divided by
    min(k, number of positives). `ranked_hits`, `ranked_scores`: per rank, scores not increasing."""
    hits, scores = np.asarray(ranked_hits[:k], bool), np.asarray(ranked_scores[:k])
    if num_positives == 0 or not hits.any():
        return 0.0
    return _tied_precision_sum(hits, scores) / min(k, num_positives)


def ilias_metrics(query_objects, db_objects, ranked: np.ndarray, ranked_scores: np.ndarray, map_ks=(1000,),
                  recall_ks=(1, 5, 10, 100)) -> dict:
    """ILIAS metrics in percent of ranked lists (`ranked`: queries x ranks of global database
    indices, `ranked_scores` the scores that ordered them; an index past the db is a distractor,
    never a positive; a positive is a db image of the query's object): `map@1k` (and `map@<k>` for
    the other map_ks; mean over queries of `ilias_average_precision` at k, x 100) and `recall@r`
    (share of queries with a positive among their first r results)."""
    db_objects = np.asarray(list(db_objects) + [None], dtype=object)  # None: every distractor
    query_objects = np.asarray(query_objects, dtype=object)
    hits = db_objects[np.minimum(ranked, len(db_objects) - 1)] == query_objects[:, None]
    num_positives = [int(np.sum(db_objects == obj)) for obj in query_objects]
    metrics = {}
    for k in map_ks:
        aps = [ilias_average_precision(h, s, n, k) for h, s, n in zip(hits, ranked_scores, num_positives)]
        metrics["map@1k" if k == 1000 else f"map@{k}"] = 100 * float(np.mean(aps))
    for r in recall_ks:
        metrics[f"recall@{r}"] = 100 * float(np.mean(hits[:, :r].any(axis=1)))
    return metrics


def revisitop_average_precision(positive_ranks: np.ndarray, num_positives: int) -> float:
    """Revisited Oxford/Paris AP (revisitop `python/evaluate.py`, `compute_ap`): trapezoidal rule
    over the precision-recall curve. `positive_ranks`: sorted 0-based ranks of the positives in
    the ranked list after junk images are removed."""
    ap = 0.0
    for j, rank in enumerate(positive_ranks):
        precision_before = 1.0 if rank == 0 else j / rank
        precision_at = (j + 1) / (rank + 1)
        ap += (precision_before + precision_at) / 2 / num_positives
    return ap


def revisitop_map(rankings: np.ndarray, gnd: list[dict]) -> tuple[float | None, np.ndarray]:
    """Revisitop mAP (revisitop `compute_map`), with the rankings one row per query (queries x
    database: the transpose of revisitop's `ranks`, which is database x queries). Each row holds
    database indices by decreasing score; `gnd[q]`: {"ok": positive indices, "junk": indices to
    ignore}. Junk images are removed from each ranking before AP; queries without positives are
    skipped (NaN in the returned APs) and do not count in the mean. Returns (mAP, per-query APs);
    the mAP is None when no query has a positive, where the official `map / (nq - nempty)`
    divides by zero."""
    aps = np.full(len(gnd), np.nan)
    for q, (row, truth) in enumerate(zip(rankings, gnd)):
        ok, junk = np.asarray(truth["ok"]), np.asarray(truth.get("junk", []))
        if len(ok) == 0:
            continue
        positions = np.flatnonzero(np.isin(row, ok))
        junk_positions = np.flatnonzero(np.isin(row, junk))
        positions = positions - np.searchsorted(junk_positions, positions)  # junk before each
        aps[q] = revisitop_average_precision(positions, len(ok))
    return (float(np.nanmean(aps)) if np.any(~np.isnan(aps)) else None), aps


def revisitop_protocol(easy, hard, junk, protocol: str) -> dict:
    """Positives and junk of a query under the Easy / Medium / Hard protocols: E: ok = easy,
    junk = junk + hard; M: ok = easy + hard, junk = junk; H: ok = hard, junk = junk + easy."""
    easy, hard, junk = list(easy), list(hard), list(junk)
    if protocol == "easy":
        return {"ok": easy, "junk": junk + hard}
    if protocol == "medium":
        return {"ok": easy + hard, "junk": junk}
    if protocol == "hard":
        return {"ok": hard, "junk": junk + easy}
    raise ValueError(f"unknown protocol {protocol!r}")
