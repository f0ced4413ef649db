"""The benchmarks, in one table: dataset name -> where its data lives by default, where to get it,
which official code its protocol follows and, for segmentation, how its episodes are read and its
per-object counts aggregated. The scripts' --dataset_file choices and default --data_path, and
the README's data table (`markdown_table`), come from here; adding a segmentation benchmark is
adding a row (and its loader)."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.loaders.permirs import load_permirs_videos, permis_episodes
from utils.loaders.perseg import load_perseg
from utils.metrics import global_iou, perseg_miou


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str  # segmentation, retrieval, ilias, training
    default_path: str
    source: str  # where to get it
    protocol: str  # the official code it follows, in a line
    # segmentation: (root, shots, ref_idx, frames) -> (episodes, skipped targets), and the mIoU of
    # per-object (intersection, union) sums
    episodes: Callable | None = None
    aggregate: Callable[[dict], float] | None = None


def _perseg_episodes(root: Path, shots: int, ref_idx: str, frames: str):
    return load_perseg(root, ref_idx, shots), 0


def _permis_episodes(root: Path, shots: int, ref_idx: str, frames: str):
    return permis_episodes(load_permirs_videos(root), shots, frames)


BENCHMARKS = {b.name: b for b in (
    Benchmark("perseg", "segmentation", "datasets/perseg", "PerSAM repository (datasets/perseg/README.md)",
              "PerSAM `eval_miou.py`: per object sum(I) / sum(U) of its targets, mean over objects",
              _perseg_episodes, perseg_miou),
    Benchmark("permis", "segmentation", "datasets/permirs", "PDM release (datasets/permirs/README.md)",
              "PDM `pdm_permis.py`: 512 x 512 crops as inputs, one global sum(I) / sum(U)",
              _permis_episodes, global_iou),
    Benchmark("permir", "retrieval", "datasets/permirs", "PDM release (datasets/permirs/README.md)",
              "PDM `pdm_permir.py`: 512 x 512 crops as inputs, sklearn AP over the gallery, Recall@k"),
    Benchmark("ilias", "ilias", "datasets/ilias", "Hugging Face `vrg-prague/ilias`, streamed "
              "(datasets/ilias/README.md)", "ILIAS `evaluation/src/dataset.py`: mAP@1k with tied scores grouped"),
    Benchmark("roxford5k", "training", "datasets/revisitop", "revisitop (datasets/revisitop/README.md)",
              "revisitop `compute_map`: E/M/H protocols, junk removed, trapezoidal AP"),
    Benchmark("rparis6k", "training", "datasets/revisitop", "revisitop (datasets/revisitop/README.md)",
              "revisitop `compute_map`: E/M/H protocols, junk removed, trapezoidal AP"),
    Benchmark("revisitop", "training", "datasets/revisitop", "revisitop (datasets/revisitop/README.md)",
              "roxford5k and rparis6k together"),
    Benchmark("uned", "training", "datasets/uned", "authors' release (datasets/uned/README.md)",
              "UnED `convert_to_tfrecord_from_file.py`: info files, rp2k names, class lists"),
)}


SCRIPTS = {"segmentation": "`sam2_permis.py`", "retrieval": "`sam2_permir_obj_scores.py`",
           "ilias": "ILIAS steps 3-7", "training": "`train_revisitop.py`"}


def names(task: str) -> list[str]:
    return [name for name, b in BENCHMARKS.items() if b.task == task]


def markdown_table() -> str:
    """The README's data table."""
    rows = ["| name | read by | default `--data_path` | where to get it | protocol |",
            "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{b.name}` | {SCRIPTS[b.task]} | `{b.default_path}` | {b.source} | {b.protocol} |"
             for b in BENCHMARKS.values()]
    return "\n".join(rows)
