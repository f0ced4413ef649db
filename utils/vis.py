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


def framed_thumbnail(image: Image.Image, size: int, color=None, border: int = 5) -> Image.Image:
    """The image scaled to fit a size x size tile, framed in `color` if one is given."""
    inner = size - 2 * border
    scale = inner / max(image.width, image.height)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    thumb = image.convert("RGB").resize((width, height))
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    left, top = (size - thumb.width) // 2, (size - thumb.height) // 2
    if color is not None:
        tile.paste(color, (left - border, top - border, left + width + border, top + height + border))
    tile.paste(thumb, (left, top))
    return tile


def ranking_strip(query: Image.Image, query_mask: np.ndarray, results: list[Image.Image],
                  is_positive: list[bool], size: int = 160) -> Image.Image:
    """One row: the query with its mask outlined, then its ranked results, positives framed
    green and negatives red."""
    pixels = np.asarray(query.convert("RGB")).copy()
    pixels[outline(query_mask, max(2, min(query_mask.shape) // 100))] = (255, 220, 0)
    tiles = [framed_thumbnail(Image.fromarray(pixels), size)]
    tiles += [framed_thumbnail(image, size, (40, 200, 40) if positive else (220, 40, 40))
              for image, positive in zip(results, is_positive)]
    strip = Image.new("RGB", (size * len(tiles) + 10, size), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * size + (10 if i else 0), 0))
    return strip
