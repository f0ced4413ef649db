"""Flags every script shares, seeding, and the metric table a run ends with."""
import argparse
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.errors import UserError
from utils.io import save_json

# dataset name -> default --data_path (PerMIS and PerMIR share the PerMIRS folder)
DATA_PATHS = {
    "perseg": "datasets/perseg",
    "permis": "datasets/permirs",
    "permir": "datasets/permirs",
}


def add_run_args(parser: argparse.ArgumentParser, datasets: list[str], output_dir: str) -> None:
    parser.add_argument("--dataset_file", required=True, choices=datasets)
    parser.add_argument("--data_path", default=None,
                        help="dataset root (default: datasets/<name>, see datasets/*/README.md)")
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--batch_size", type=int, default=None,
                        help="targets per forward pass (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--seed", type=int, default=0)


def data_path(args) -> Path:
    return Path(args.data_path or DATA_PATHS[args.dataset_file])


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar, drawn on a terminal only: logs and error output stay clean."""
    return tqdm(iterable, disable=None, **kwargs)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table; floats with 2 decimals."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w)
                                   for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def finish(output_dir, metrics: dict, table: str) -> dict:
    """Print the run's metric table and write the same numbers to <output_dir>/metrics.json."""
    print(table)
    path = save_json(Path(output_dir) / "metrics.json", metrics)
    print(f"metrics written to {path}")
    return metrics


def batched(items: list, size: int):
    """Consecutive chunks of `size` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pair_batch_size(requested: int | None, device) -> int:
    """Pairs per SAM2 forward pass: as asked, else 8 on a GPU and 1 on the CPU, where batching
    adds no throughput (each op already uses every core) and each new batch shape costs a
    warm-up (measured by bench.py)."""
    if requested is not None:
        check_positive(requested, "--batch_size")
        return requested
    return 8 if str(device).startswith("cuda") else 1


def check_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UserError(f"{flag} must be at least 1", f"{flag} {value}", f"pass {flag} 1 or more")
