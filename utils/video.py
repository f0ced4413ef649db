"""Videos decoded with PyAV (FFmpeg inside its wheels): which frames, at which times, which way up.

Frames come out as `frame.to_ndarray(format="rgb24")`, turned upright by the video's rotation
(the display matrix phones write into their clips: `frame.rotation` degrees counterclockwise).
A frame's number is its index among the video's decoded frames, its time the seconds from the
first frame. `sampled_frames(path, fps)` gives the frames nearest to t = 0, 1/fps, 2/fps, ...
(up to the last frame's time; ties go to the earlier frame; a frame nearest to several times
comes once), or every frame with fps 0. A video that cannot be opened or decoded (not a video,
truncated, a codec FFmpeg lacks) raises `Unreadable` naming it, as a photo does.
"""
from dataclasses import dataclass
from typing import Iterator

import av
from PIL import Image

from utils.images import Unreadable

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
UPRIGHT = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError)


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header and first frame say: its upright size, and its length."""
    height: int
    width: int
    duration: float  # seconds (0 if the container does not say)


@dataclass(frozen=True)
class VideoFrame:
    number: int  # index among the decoded frames
    time: float  # seconds from the first frame
    image: Image.Image  # RGB, upright


def _unreadable(path, err: Exception) -> Unreadable:
    reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
    return Unreadable(f"not a readable video ({reason})", str(path), "replace or re-export the file (MP4, H.264 or HEVC)")


def upright(image: Image.Image, rotation: int) -> Image.Image:
    """The frame as a player shows it: turned `rotation` degrees counterclockwise."""
    method = UPRIGHT.get(round(rotation) % 360)
    return image.transpose(method) if method is not None else image


def _decoded(path) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(number, time, frame) of every frame, in order; FFmpeg decodes with its own threads."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise Unreadable("holds no video stream", str(path), "give a video file, or remove it")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first = None
            for number, frame in enumerate(container.decode(stream)):
                seconds = float(frame.pts * stream.time_base) if frame.pts is not None else \
                    number / float(stream.average_rate or 1)
                first = seconds if first is None else first
                yield number, seconds - first, frame
            if first is None:
                raise Unreadable("holds no frame", str(path), "replace or re-export the file")
    except Unreadable:
        raise
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def _image(frame: av.VideoFrame) -> Image.Image:
    return upright(Image.fromarray(frame.to_ndarray(format="rgb24")), frame.rotation)


def sampled_frames(path, fps: float) -> Iterator[VideoFrame]:
    """The frames nearest to t = 0, 1/fps, 2/fps, ... (every frame with fps 0); see the module
    docstring. Only these frames are converted to RGB."""
    previous, step, last_number = None, 0, -1
    for number, seconds, frame in _decoded(path):
        if fps == 0:
            yield VideoFrame(number, seconds, _image(frame))
            continue
        while step / fps <= seconds + 1e-9:
            target = step / fps
            chosen = previous if previous is not None and target - previous[1] <= seconds - target else \
                (number, seconds, frame)
            if chosen[0] != last_number:
                last_number = chosen[0]
                yield VideoFrame(chosen[0], chosen[1], _image(chosen[2]))
            step += 1
        previous = (number, seconds, frame)


def probe(path, max_pixels: int | None = None) -> VideoInfo:
    """Open the video and decode its first frame (an unknown codec or a broken file fails here,
    cheaply, before any work); its upright size and duration."""
    frames = _decoded(path)
    _, _, frame = next(frames)
    width, height = (frame.height, frame.width) if round(frame.rotation) % 180 else (frame.width, frame.height)
    frames.close()
    if max_pixels is not None and width * height > max_pixels:
        raise Unreadable(f"video frames of {width}x{height} pixels are larger than the limit of {max_pixels:,} "
                         "pixels", str(path), "re-export it smaller, or ask for a larger limit")
    try:
        with av.open(str(path)) as container:
            return VideoInfo(height, width, float(container.duration or 0) / av.time_base)
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None
