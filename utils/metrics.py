"""Every metric of the project, with its official definition in the docstring."""
import numpy as np
from scipy import ndimage


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
    diagonal) (at least 1), with pixels outside the image counted as background."""
    mask = mask.astype(bool)
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height ** 2 + width ** 2))))
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=dilation,
                                    border_value=0)
    return mask & ~eroded


def boundary_intersection_union(pred: np.ndarray, gt: np.ndarray,
                                dilation_ratio: float = 0.02) -> tuple[int, int]:
    """Boundary IoU's counts: intersection and union of the two boundary bands."""
    return intersection_union(mask_boundary(pred, dilation_ratio), mask_boundary(gt, dilation_ratio))


def perseg_miou(per_object: dict[str, tuple[int, int]]) -> float:
    """PerSeg mIoU (PerSAM protocol): for each object, the sum of intersections over the sum of
    unions of its non-reference images; mIoU is the mean over objects. Input: object ->
    (sum of intersections, sum of unions). Used for mIoU and, with boundary counts, bIoU."""
    return float(np.mean([ratio(inter, union) for inter, union in per_object.values()]))


def global_iou(per_object: dict[str, tuple[int, int]]) -> float:
    """PerMIS (PDM protocol): one global sum of intersections over sum of unions, all targets."""
    return ratio(sum(i for i, _ in per_object.values()), sum(u for _, u in per_object.values()))
