"""Photos and clips as phones and cameras write them, made by the tests: HEIC, AVIF, WebP, clips of
H.264 (lossless RGB, so that decoded pixels are the written ones) and HEVC, and a clip's rotation
as a phone records it (the MP4 track header's display matrix)."""
import io
import struct
from pathlib import Path

import av
import numpy as np
import pillow_heif
from PIL import Image

from utils.synthetic import render_object, render_scene

ROTATE_90_CLOCKWISE = (0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)  # what a phone held upright writes


def moving_scenes(count: int, height: int, width: int, seed: int, obj_seed: int = 5) -> list[np.ndarray]:
    """`count` frames of one object over a still background, moving a little each frame (and
    absent from the middle frames, so that a clip has stretches with and without it)."""
    return [frame for frame, _ in moving_object(count, height, width, seed, obj_seed)]


def moving_object(count: int, height: int, width: int, seed: int, obj_seed: int = 5):
    """The frames of `moving_scenes` with the object's mask in each."""
    rng = np.random.default_rng(seed)
    background, _ = render_scene(rng, Image.new("RGBA", (8, 8)), height, width, scale=0.1)
    sprite = render_object(obj_seed).resize((width // 3, width // 3), Image.NEAREST)
    frames = []
    for i in range(count):
        frame, mask = background.copy(), np.zeros((height, width), bool)
        if not count // 3 <= i < count // 2:
            x, y = int(i * (width - sprite.width) / max(1, count - 1)), height // 4
            frame.paste(sprite, (x, y), sprite)
            mask[y:y + sprite.height, x:x + sprite.width] = np.asarray(sprite)[..., 3][:height - y, :width - x] > 0
        frames.append((np.asarray(frame), mask))
    return frames


def write_clip(path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264rgb") -> Path:
    """A clip of the frames: libx264rgb lossless (decodes to these very pixels), or libx264 /
    libx265 in yuv420p as phones record."""
    height, width = frames[0].shape[:2]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        if codec == "libx264rgb":
            stream.pix_fmt, stream.options = "rgb24", {"qp": "0"}
        else:
            stream.pix_fmt = "yuv420p"
            if codec == "libx265":
                stream.options = {"x265-params": "log-level=none"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def rotate_clip(path, matrix=ROTATE_90_CLOCKWISE) -> Path:
    """Write a rotation into an MP4/MOV's track header, as a phone does for a clip held upright."""
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    offset = at + 8 + (8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4) + 8 + 2 + 2 + 2 + 2
    data[offset:offset + 36] = struct.pack(">9i", *matrix)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def save_photo(path, image: Image.Image, fmt: str, orientation: int | None = None) -> Path:
    """A photo in `fmt` (HEIF through pillow-heif), with an EXIF orientation tag if given."""
    buffer = io.BytesIO()
    extra = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        extra["exif"] = exif.tobytes()
    if fmt == "HEIF":
        pillow_heif.from_pillow(image).save(buffer, quality=-1, **extra)  # lossless
    else:
        image.save(buffer, format=fmt, **({"lossless": True} if fmt in ("WEBP", "AVIF") else {}), **extra)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue())
    return Path(path)
