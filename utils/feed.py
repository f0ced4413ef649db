"""Images and video frames decoded ahead of the model, in the order it takes them.

A GPU encodes a frame in 11-25 ms (sam2's README, A100, compiled), while one core decodes and
resizes a 1024 x 768 JPEG in about 10 ms and a 12-megapixel photo in about 110 ms (bench.py
--suite feed): decoded in the main process between model calls, images would keep the GPU
waiting. A feed decodes and resizes them in worker processes that run ahead of the model, in
exactly the order the model takes them, and hands them over as bytes, in pinned memory on CUDA
(so the copy to the GPU does not block). Without workers, each image is decoded in the main
process when it is needed. The pixels are the same either way (the same code computes them).
A video is decoded by a worker process of its own that streams its sampled frames in order, so
several videos decode at once, each ahead of the model, and memory holds a few frames per video.
"""
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from utils.errors import UserError
from utils.images import Unreadable
from utils.loops import ignore_interrupts, worker_map
from utils.pseudo_video import Frame, prepare_frame
from utils.video import sampled_frames

PREFETCH = 16  # frames a video's worker decodes ahead of the model


class FrameFeed:
    """SAM2 frames (`utils.pseudo_video.prepare_frame`) of images given by id, decoded by
    `num_workers` processes ahead of their use (0: when asked for), pinned for `device` if CUDA."""

    def __init__(self, open_image: Callable[[str], Image.Image], image_size: int, num_workers: int = 0,
                 device: torch.device = torch.device("cpu")):
        self.open_image, self.image_size, self.num_workers = open_image, image_size, num_workers
        self.pin_memory = device.type == "cuda"

    def _decoded(self, image_id: str) -> tuple[torch.Tensor, int, int]:
        frame = prepare_frame(self.open_image(image_id), self.image_size, image_id)
        return frame.pixels, frame.height, frame.width

    def frames(self, image_ids: list[str], keep_going: tuple = ()) -> Iterator[Frame | UserError]:
        """The frames of `image_ids`, in that order; an image that fails with an error of a kind
        in `keep_going` gives that error in its place."""
        decoded = worker_map(self._decoded, image_ids, self.num_workers, self.pin_memory, keep_going)
        for image_id, item in zip(image_ids, decoded):
            yield item if isinstance(item, UserError) else Frame(*item, image_id)


class VideoItem(NamedTuple):  # a named tuple, which the DataLoader pins on CUDA
    """A sampled frame of a video, prepared for a model (`pixels`), with its number, time and the
    video's upright size."""
    number: int
    time: float
    pixels: torch.Tensor
    height: int
    width: int


class _VideoFrames(IterableDataset):
    """One video's sampled frames, prepared; an unreadable video ends with its error as the last
    item (the main process raises it or skips the video)."""

    def __init__(self, path: Path, fps: float, prepare: Callable[[Image.Image], torch.Tensor]):
        self.path, self.fps, self.prepare = path, fps, prepare

    def __iter__(self):
        try:
            for frame in sampled_frames(self.path, self.fps):
                yield VideoItem(frame.number, frame.time, self.prepare(frame.image), frame.image.height,
                                frame.image.width)
        except Unreadable as err:
            yield err


class VideoFeed:
    """The sampled frames (utils/video.py) of videos, prepared by `prepare` (e.g. SAM2's resize):
    each video decoded by a worker process of its own, ahead of the model, up to `num_workers`
    videos at a time in the order they are asked for (0: in this process, when asked for)."""

    def __init__(self, path_of: Callable[[str], Path], fps: float, prepare: Callable[[Image.Image], torch.Tensor],
                 num_workers: int = 0, device: torch.device = torch.device("cpu")):
        self.path_of, self.fps, self.prepare, self.num_workers = path_of, fps, prepare, num_workers
        self.pin_memory = device.type == "cuda"

    def _frames(self, video_id: str) -> Iterator:
        loader = DataLoader(_VideoFrames(self.path_of(video_id), self.fps, self.prepare), batch_size=None,
                            num_workers=min(1, self.num_workers), pin_memory=self.pin_memory,
                            worker_init_fn=ignore_interrupts, prefetch_factor=PREFETCH if self.num_workers else None)
        return iter(loader)  # a worker starts decoding now

    def videos(self, video_ids: list[str]) -> Iterator[tuple[str, Iterator[VideoItem | Unreadable]]]:
        """(video id, its frames) for each video, in order."""
        started = {}
        for k, video_id in enumerate(video_ids):
            for ahead in video_ids[k:k + max(1, self.num_workers)]:
                if ahead not in started:
                    started[ahead] = self._frames(ahead)
            yield video_id, started.pop(video_id)
