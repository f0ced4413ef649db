"""Pictures for a person to look at: mask overlays (PNG)."""
import numpy as np
from PIL import Image
from scipy import ndimage

PRED_COLOR = np.array([255, 40, 40], np.float32)
GT_COLOR = np.array([40, 255, 40], np.uint8)


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def overlay(image: Image.Image, pred: np.ndarray, gt: np.ndarray | None = None) -> Image.Image:
    """The image with the prediction tinted red and the ground truth outlined green."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    pixels[pred] = 0.5 * pixels[pred] + 0.5 * PRED_COLOR
    pixels = pixels.astype(np.uint8)
    if gt is not None:
        pixels[outline(gt, max(1, min(gt.shape) // 200))] = GT_COLOR
    return Image.fromarray(pixels)
