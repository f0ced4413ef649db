"""Loops over images: progress bars, fixed-size chunks, and decoding worker processes."""
import signal
import sys
from typing import Callable, Iterator

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.errors import UserError


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar, drawn on a terminal only: logs and error output stay clean."""
    kwargs.setdefault("disable", None)
    return tqdm(iterable, **kwargs)


def batched(items: list, size: int):
    """Consecutive chunks of `size` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def ignore_interrupts(_worker_id: int) -> None:
    """Decoding workers leave Ctrl-C to the main process, which reports it on one line (they end
    when it has gone); the thread that hands their tensors over does not print a traceback when
    an interrupted main process hangs up on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = sys.excepthook  # multiprocessing's resource sharer reports through it
    sys.excepthook = lambda kind, error, trace: None if issubclass(kind, ConnectionError) else \
        default_hook(kind, error, trace)


def worker_loader(dataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The items of `dataset`, one by one and in order, made by `num_workers` processes that run
    ahead of the consumer (0: made in this process when asked for)."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=ignore_interrupts)


class _Mapped(Dataset):
    """function(items[i]) as (value, None), or (None, the user error it raised): what a worker
    can hand over."""

    def __init__(self, function: Callable, items: list):
        self.function, self.items = function, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return self.function(self.items[i]), None
        except UserError as err:
            return None, err


def worker_map(function: Callable, items: list, num_workers: int, pin_memory: bool = False,
               keep_going: tuple[type[UserError], ...] = ()) -> Iterator:
    """function(item) for each item, in order, computed by `num_workers` processes ahead of the
    consumer (0: in this process, when asked for); tensors in pinned memory if `pin_memory`. A
    user error raised for an item is raised again here, where the run reports it; one of the
    kinds in `keep_going` (a damaged photo of a library, say) is yielded in the item's place."""
    for value, error in worker_loader(_Mapped(function, items), min(num_workers, len(items)), pin_memory):
        if error is not None and not isinstance(error, keep_going):
            raise error
        yield value if error is None else error
