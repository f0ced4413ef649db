"""Images decoded ahead of the model, in the order it takes them.

A GPU encodes a frame in 11-25 ms (sam2's README, A100, compiled), while one core decodes and
resizes a 1024 x 768 JPEG in about 10 ms and a 12-megapixel photo in about 110 ms (bench.py
--suite feed): decoded in the main process between model calls, images would keep the GPU
waiting. A feed decodes and resizes them in worker processes that run ahead of the model, in
exactly the order the model takes them, and hands them over as bytes, in pinned memory on CUDA
(so the copy to the GPU does not block). Without workers, each image is decoded in the main
process when it is needed. The pixels are the same either way (the same code computes them).
"""
from typing import Callable, Iterator

import torch
from PIL import Image

from utils.loops import worker_map
from utils.pseudo_video import Frame, prepare_frame


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

    def frames(self, image_ids: list[str]) -> Iterator[Frame]:
        """The frames of `image_ids`, in that order."""
        decoded = worker_map(self._decoded, image_ids, self.num_workers, self.pin_memory)
        for image_id, (pixels, height, width) in zip(image_ids, decoded):
            yield Frame(pixels, height, width, image_id)
