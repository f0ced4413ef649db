"""Images decoded ahead of the model, in the order it takes them.

A GPU encodes a frame in 11-25 ms (sam2's README, A100, compiled), while one core decodes and
resizes a 1024 x 768 JPEG in about 25 ms and a 12-megapixel photo in about 130 ms: decoded in the
main process between model calls, images would keep the GPU waiting. A feed decodes and
preprocesses them in DataLoader worker processes that run ahead of the model, in exactly the order
the model takes them, and hands them over in pinned memory on CUDA (so the copy to the GPU does not
block). Without workers, each image is decoded in the main process when it is needed. The pixels
are the same either way (the same code computes them).
"""
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import UserError
from utils.loops import worker_loader
from utils.pseudo_video import Frame, prepare_frame


class _DecodedFrames(Dataset):
    """Frame i of a list of image ids, as plain tensors and numbers (what a worker can hand over),
    or the user error its image raised."""

    def __init__(self, image_ids: list[str], open_image: Callable[[str], Image.Image], image_size: int):
        self.image_ids, self.open_image, self.image_size = image_ids, open_image, image_size

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        try:
            frame = prepare_frame(self.open_image(self.image_ids[i]), self.image_size)
        except UserError as err:  # raised again in the main process, which reports it
            return {"error": (err.what, err.where, err.fix)}
        return {"pixels": frame.pixels, "height": frame.height, "width": frame.width}


class FrameFeed:
    """SAM2 frames (`utils.pseudo_video.prepare_frame`) of images given by id, decoded by
    `num_workers` processes ahead of their use (0: when asked for), pinned for `device` if CUDA."""

    def __init__(self, open_image: Callable[[str], Image.Image], image_size: int, num_workers: int = 0,
                 device: torch.device = torch.device("cpu")):
        self.open_image, self.image_size, self.num_workers = open_image, image_size, num_workers
        self.pin_memory = device.type == "cuda"

    def frames(self, image_ids: list[str]) -> Iterator[Frame]:
        """The frames of `image_ids`, in that order."""
        if not self.num_workers:
            for image_id in image_ids:
                yield prepare_frame(self.open_image(image_id), self.image_size, image_id)
            return
        loader = worker_loader(_DecodedFrames(image_ids, self.open_image, self.image_size),
                               min(self.num_workers, len(image_ids)), self.pin_memory)
        for image_id, item in zip(image_ids, loader):
            if "error" in item:
                raise UserError(*item["error"])
            yield Frame(item["pixels"], item["height"], item["width"], image_id)
