"""Metrics on small hand-computed masks."""
import numpy as np
import pytest

from utils.metrics import (boundary_intersection_union, global_iou, intersection_union, iou,
                           mask_boundary, perseg_miou)


def box_mask(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_iou_by_hand():
    pred = box_mask((4, 4), 0, 2, 0, 2)  # 4 pixels
    gt = box_mask((4, 4), 1, 3, 1, 3)  # 4 pixels, 1 shared
    assert intersection_union(pred, gt) == (1, 7)
    assert iou(pred, gt) == pytest.approx(1 / 7)
    assert iou(pred, pred) == 1.0
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError):
        intersection_union(pred, gt[:3])


def test_boundary_band_width():
    # 10 x 10 image: diagonal 14.1, 2% of it rounds to 0 -> at least 1 pixel of band
    mask = box_mask((10, 10), 2, 8, 2, 8)
    band = mask_boundary(mask)
    assert band.sum() == 36 - 16  # a 6x6 square minus its 4x4 inside
    # 100 x 100: diagonal 141.4 -> 2.83 -> 3 pixels of band
    big = box_mask((100, 100), 10, 60, 10, 60)
    assert mask_boundary(big).sum() == 50 * 50 - 44 * 44
    # touching the image border: outside counts as background, so the border is boundary too
    full = np.ones((100, 100), bool)
    assert mask_boundary(full).sum() == 100 * 100 - 94 * 94


def test_boundary_iou_by_hand():
    gt = box_mask((10, 10), 2, 8, 2, 8)  # band: ring of the 6x6 square, 20 px
    pred = box_mask((10, 10), 2, 8, 3, 9)  # same square moved right by 1, ring 20 px
    inter, union = boundary_intersection_union(pred, gt)
    # shared: top and bottom rows at x=3..7 (5 each); the side columns (gt x=2,7; pred x=3,8)
    # each fall inside the other square, not on its ring
    assert inter == 5 + 5
    assert union == 20 + 20 - inter


def test_aggregations():
    counts = {"a": (1, 2), "b": (3, 4)}
    assert perseg_miou(counts) == pytest.approx((0.5 + 0.75) / 2)  # mean of per-object ratios
    assert global_iou(counts) == pytest.approx(4 / 6)  # one global ratio


def test_average_precision_equals_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    from utils.metrics import average_precision
    rng = np.random.default_rng(0)
    for _ in range(50):
        positives = rng.random(30) < 0.3
        positives[rng.integers(30)] = True
        scores = rng.integers(0, 6, 30).astype(np.float32)  # many ties
        assert average_precision(scores, positives) == pytest.approx(
            average_precision_score(positives, scores), abs=1e-12)
    assert average_precision(np.array([0.9, 0.1]), np.array([False, False])) == 0.0


def test_retrieval_metrics_by_hand():
    from utils.metrics import retrieval_metrics
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.3, 0.9, 0.8]])
    positives = np.array([[False, True, False, True], [True, False, False, False]])
    metrics = retrieval_metrics(scores, positives, ks=(1, 2, 4))
    # query 0: hits at ranks 2 and 4 -> (1/2 + 2/4) / 2; query 1: hit at rank 4 -> 1/4
    assert metrics["map"] == pytest.approx(100 * ((0.5 + 0.5) / 2 + 0.25) / 2)
    assert metrics["recall@1"] == 0.0 and metrics["recall@2"] == 50.0 and metrics["recall@4"] == 100.0


def test_masks_pack_roundtrip():
    from utils.io import pack_masks, unpack_masks
    rng = np.random.default_rng(1)
    masks = [rng.random((5, 7)) < 0.5, rng.random((3, 3)) < 0.5, np.ones((1, 9), bool)]
    back = unpack_masks(pack_masks(masks))
    assert all(np.array_equal(a, b) for a, b in zip(masks, back))


def test_compute_map_protocols_by_hand():
    from utils.metrics import compute_map, revisitop_protocol
    # database 0..5, ranked 3 0 5 1 4 2 for one query; easy {0, 4}, hard {1}, junk {5}
    ranks = np.array([[3, 0, 5, 1, 4, 2]])
    easy, hard, junk = [0, 4], [1], [5]
    # medium: ok {0,1,4}, junk {5} removed -> list 3 0 1 4 2: positives at ranks 1, 2, 3
    # AP = [(0 + 1/2) + (1/2 + 2/3) + (2/3 + 3/4)] / 2 / 3
    medium, _ = compute_map(ranks, [revisitop_protocol(easy, hard, junk, "medium")])
    assert medium == pytest.approx(((0 + 1 / 2) + (1 / 2 + 2 / 3) + (2 / 3 + 3 / 4)) / 2 / 3)
    # easy: ok {0,4}, junk {5,1} removed -> list 3 0 4 2: positives at ranks 1, 2
    easy_map, _ = compute_map(ranks, [revisitop_protocol(easy, hard, junk, "easy")])
    assert easy_map == pytest.approx(((0 + 1 / 2) + (1 / 2 + 2 / 3)) / 2 / 2)
    # hard: ok {1}, junk {5,0,4} removed -> list 3 1 2: positive at rank 1
    hard_map, _ = compute_map(ranks, [revisitop_protocol(easy, hard, junk, "hard")])
    assert hard_map == pytest.approx((0 + 1 / 2) / 2)
    # a query without positives is skipped, not counted as 0
    both, aps = compute_map(np.vstack([ranks, ranks]), [revisitop_protocol(easy, hard, junk, "hard"),
                                                        {"ok": [], "junk": []}])
    assert both == pytest.approx(hard_map) and np.isnan(aps[1])
