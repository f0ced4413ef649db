"""Loops over images: progress bars, fixed-size chunks, and decoding worker processes."""
import signal
import sys

from torch.utils.data import DataLoader
from tqdm import tqdm


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
