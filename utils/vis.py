"""Pictures for a person to look at: mask overlays (PNG)."""
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

PRED_COLOR = np.array([255, 40, 40], np.float32)
GT_COLOR = np.array([40, 255, 40], np.uint8)
QUERY_COLOR = (255, 220, 0)
POINT_COLORS = {1: (40, 220, 40), 0: (230, 40, 40)}  # on the object, not on it


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


def with_mask_outline(image: Image.Image, mask: np.ndarray) -> Image.Image:
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[outline(mask, max(2, min(mask.shape) // 100))] = QUERY_COLOR
    return Image.fromarray(pixels)


def with_prompt(image: Image.Image, mask: np.ndarray | None = None, box=None, points=(), labels=()) -> Image.Image:
    """The image with its prompt drawn: a mask outlined, a box, points (green on the object, red
    not on it)."""
    annotated = with_mask_outline(image, mask) if mask is not None else image.convert("RGB")
    if box is not None:
        annotated = with_box(annotated, box)
    draw, radius = ImageDraw.Draw(annotated), max(3, min(image.size) // 80)
    for (x, y), label in zip(points, labels):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=POINT_COLORS[label], outline=(255, 255, 255),
                     width=max(1, radius // 3))
    return annotated


def with_box(image: Image.Image, box) -> Image.Image:
    """The image with an (x1, y1, x2, y2) box drawn."""
    annotated = image.convert("RGB")
    ImageDraw.Draw(annotated).rectangle(list(box), outline=QUERY_COLOR, width=max(2, min(image.size) // 100))
    return annotated


def ranking_strip(query: Image.Image, results: list[Image.Image], is_positive: list[bool] | None = None,
                  size: int = 160) -> Image.Image:
    """One row: the (annotated) query, then its ranked results, positives framed green and
    negatives red (grey frames without ground truth)."""
    colors = [(40, 200, 40) if positive else (220, 40, 40) for positive in is_positive] if is_positive is not None \
        else [(150, 150, 150)] * len(results)
    tiles = [framed_thumbnail(query, size)]
    tiles += [framed_thumbnail(image, size, color) for image, color in zip(results, colors)]
    strip = Image.new("RGB", (size * len(tiles) + 10, size), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * size + (10 if i else 0), 0))
    return strip


def stack_rows(rows: list[Image.Image], gap: int = 8) -> Image.Image:
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)),
                      (255, 255, 255))
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + gap
    return sheet
