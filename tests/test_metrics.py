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


def test_revisitop_map_protocols_by_hand():
    from utils.metrics import revisitop_map as compute_map, revisitop_protocol
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
    # no query with a positive: no number (the official code divides by zero there)
    none, aps = compute_map(ranks, [{"ok": [], "junk": [5]}])
    assert none is None and np.isnan(aps).all()


def test_pdm_crop_box_by_hand():
    from utils.metrics import pdm_crop_box
    frame = np.zeros((720, 1280), bool)  # 16:9: the square is 720 wide, centred at x 280..1000
    assert pdm_crop_box(frame) == (280.0, 0.0, 1000.0, 720.0)  # empty mask: the centred square
    left = frame.copy()
    left[300:400, 10:110] = True  # x-range [10, 110): the square shifts left to start at 10
    assert pdm_crop_box(left) == (10, 0.0, 730.0, 720.0)
    right = frame.copy()
    right[300:400, 1200:1270] = True  # ends at 1270: shifted right
    assert pdm_crop_box(right) == (550.0, 0.0, 1270, 720.0)
    wide = frame.copy()
    wide[300:400, 100:1200] = True  # wider than the square: PDM shifts left, then right
    assert pdm_crop_box(wide) == (100 + (1200 - 820), 0.0, 1200, 720.0)
    odd = np.zeros((101, 150), bool)  # half-pixel edges, as PDM's float offsets (PIL rounds them)
    assert pdm_crop_box(odd) == (24.5, 0.0, 125.5, 101.0)


def test_pdm_crop_fraction_is_measured_on_the_square():
    from utils.metrics import PDM_MIN_CROP_FRACTION, pdm_crop, pdm_crop_box, pdm_crop_fraction
    frame = np.zeros((720, 1280), bool)
    frame[300:350, 400:456] = True  # 2,800 pixels: 0.30% of the frame, 0.54% of the 720 square
    assert frame.mean() < PDM_MIN_CROP_FRACTION < pdm_crop_fraction(frame)
    assert pdm_crop_fraction(frame) == pytest.approx(2800 / 720 ** 2, rel=0.02)
    crop = pdm_crop(frame, pdm_crop_box(frame))
    assert crop.shape == (512, 512) and crop.dtype == bool
    ys, xs = np.nonzero(crop)  # the object lands where the square puts it: x 120..176 of 720
    assert xs.min() == pytest.approx(120 * 512 / 720, abs=1) and xs.max() + 1 == pytest.approx(176 * 512 / 720, abs=1)


def test_ilias_ap_groups_tied_scores_as_the_official_code():
    from ilias_data import official_ilias_ap
    from utils.metrics import ilias_average_precision
    rng = np.random.default_rng(0)
    for _ in range(100):
        hits = rng.random(40) < 0.3
        hits[rng.integers(40)] = True
        scores = -np.sort(-rng.integers(0, 5, 40).astype(np.float64))  # ranked: heavy ties
        num_positives, k = int(hits.sum()) + int(rng.integers(0, 3)), int(rng.choice([10, 40, 1000]))
        assert ilias_average_precision(hits, scores, num_positives, k) == pytest.approx(
            official_ilias_ap(hits, scores, num_positives, k), abs=1e-12)
    # one tie of a hit ranked first and a miss: grouped, the hit is at precision 1/2, not 1
    assert ilias_average_precision(np.array([True, False]), np.array([0.7, 0.7]), 1) == 0.5
    assert ilias_average_precision(np.array([True, False]), np.array([0.8, 0.7]), 1) == 1.0
