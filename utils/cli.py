"""The CLI layer: the flag vocabulary of every script, defined once; how a script starts (its run
setup from the flags) and how it ends (its metric table, metrics.json with the run's record, one
line for a user error or Ctrl-C). Library modules never import this module.

One name per meaning across scripts:
  --dataset_file, --data_path      which dataset, where (defaults: utils/benchmarks.py)
  --output_dir, --seed             where results go; the seed of every random draw
  --sam2_cfg, --sam2_checkpoint    the SAM2 model; --compile (torch.compile of its modules)
  --device, --amp, --dist_timeout  this process's device; bf16 autocast (utils/amp.py); how long
                                   a process waits for the others under torchrun (utils/dist.py)
  --pair_batch_size                (reference, target) pairs per SAM2 forward
  --num_workers                    processes that decode images ahead of the model
  --chunk_size                     work per saved part; each script's unit: objects (segmentation),
                                   gallery images (PerMIR), candidate images (re-ranking), photos
                                   (your photos); default: utils/sam2_run.py chunk_size
  --dinov2, --dinov2_resolution, --dinov2_preprocess, --dinov2_batch_size (images per DINOv2 forward)
  --topk                           first-stage candidates kept per query (the top-K width)
  --rerank_depth                   first-stage candidates re-ranked by SAM2 per query (k <= K)
  --visualize N                    PNGs for the first N queries (or N targets per object)
  --source, --data_path, --<split>_repo, --<split>_shards   where the ILIAS shards come from
  --data_path                      a dataset root; for the ILIAS shard steps with --source local,
                                   the folder of the shards; for your photos, the photo folder
Counts are positive integers (`positive_int`): 0 or less is refused when the flags are parsed.
"""
import argparse
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from utils import ilias_store
from utils.benchmarks import BENCHMARKS
from utils.dist import DEFAULT_TIMEOUT_S, Run, end_processes, setup_run
from utils.errors import UserError
from utils.io import OutputLock, write_metrics

REPO = Path(__file__).resolve().parents[1]
VERSIONED = ("torch", "sam2", "transformers", "numpy", "pillow", "faiss-cpu", "datasets", "scikit-learn")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class CliParser(argparse.ArgumentParser):
    """argparse with the project's one-line error (argparse's own prints the usage too)."""

    def __init__(self, doc: str):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message):
        print(f"error: {message} ({self.prog}): see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def add_dataset_args(parser, datasets: list[str], default: str | None = None) -> None:
    parser.add_argument("--dataset_file", choices=datasets, default=default, required=default is None)
    parser.add_argument("--data_path", default=None,
                        help="dataset root (default: per dataset, see utils/benchmarks.py and datasets/*/README.md)")


def add_permirs_frames_arg(parser) -> None:
    from utils.loaders.permirs import FRAMES

    parser.add_argument("--permirs_frames", choices=FRAMES, default="pdm",
                        help="PerMIS, PerMIR: what the model is given, PDM's 512 x 512 crop of each frame (the "
                             "official protocol) or the whole frames (measured on the crops all the same)")


def add_output_args(parser, output_dir: str) -> None:
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--seed", type=int, default=0)


def add_sam2_cfg_arg(parser, default: str, what: str = "") -> None:
    parser.add_argument("--sam2_cfg", default=default,
                        help=f"{what + ': ' if what else ''}a sam2 config name (e.g. configs/sam2.1/sam2.1_hiera_t.yaml) "
                             "or the path of a yaml file of the same structure")


def add_sam2_args(parser, pairs_help: str = "(reference, target) pairs per SAM2 forward") -> None:
    from utils.sam2_model import CHECKPOINT_DIR, SAM2_1_MODELS

    config, checkpoint = SAM2_1_MODELS["large"]
    add_sam2_cfg_arg(parser, config)
    parser.add_argument("--sam2_checkpoint", default=f"{CHECKPOINT_DIR}/{checkpoint}",
                        help="official checkpoint file ({'model': state_dict})")
    add_device_args(parser)
    parser.add_argument("--pair_batch_size", type=positive_int, default=None,
                        help=f"{pairs_help} (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile SAM2's image encoder, memory attention and mask decoder (on the "
                             "CPUs measured: slower than eager, or paying after 100+ targets; README: Performance)")


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default=None,
                        help="cuda (under torchrun: the GPU of this process's LOCAL_RANK) or cpu "
                             "(default: cuda if available)")


def add_device_args(parser, workers_help: str = "processes that decode images ahead of the model") -> None:
    add_device_arg(parser)
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast on CUDA and on CPUs with native bf16 (scores stay fp32)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help=f"{workers_help} (default: 4 beside a GPU, 0 on the CPU)")
    parser.add_argument("--dist_timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="under torchrun: seconds a process waits for the others to join")


def add_dinov2_args(parser, model: str | None, resolution: int, preprocess: str, help_model: str) -> None:
    from utils.dinov2 import PREPROCESSING

    parser.add_argument("--dinov2", default=model, help=help_model)
    parser.add_argument("--dinov2_resolution", type=int, default=resolution,
                        help="large_side: the larger side; short_side_crop: the side of the square crop")
    parser.add_argument("--dinov2_preprocess", choices=PREPROCESSING, default=preprocess,
                        help="large_side: aspect kept, zero padding to the patch size (ILIAS's official); "
                             "short_side_crop: shorter side resized, centre square crop")
    parser.add_argument("--dinov2_batch_size", type=positive_int, default=32, help="images per DINOv2 forward")


def add_chunk_arg(parser, unit: str) -> None:
    parser.add_argument("--chunk_size", type=positive_int, default=None,
                        help=f"{unit} per saved part (default: the work cut into about 256 parts, the same for any "
                             "number of processes)")


def add_visualize_arg(parser, what: str) -> None:
    parser.add_argument("--visualize", type=int, default=0, metavar="N", help=f"write PNGs for {what}")


def add_search_args(parser, visualize: bool = True) -> None:
    """Your photos' search flags (search_photos.py, app.py): their defaults are `SearchOptions`'."""
    from utils.photo_search import SearchOptions
    from utils.pseudo_video import SCORES

    defaults = SearchOptions()
    add_dinov2_args(parser, None, defaults.dinov2_resolution, defaults.dinov2_preprocess,
                    "shortlist the photos with this DINOv2 (hub id or local folder) before SAM2")
    parser.add_argument("--score", choices=SCORES, default=defaults.score, help="the SAM2 score that ranks")
    parser.add_argument("--shortlist", type=positive_int, default=defaults.shortlist,
                        help="with --dinov2: photos and videos per object that go to SAM2")
    parser.add_argument("--video_fps", type=float, default=defaults.video_fps,
                        help="video frames searched per second (the frames nearest to 0, 1/F, 2/F, ... s; 0: every "
                             "frame)")
    parser.add_argument("--full_decode", action="store_true",
                        help="decode every photo whole (default: a JPEG larger than the model's input is decoded at "
                             "the smallest DCT scale that still covers it, 2-8x fewer pixels)")
    if visualize:
        add_visualize_arg(parser, "each object: its references and its N best photos and videos, masks overlaid")


def search_options(args, **settings):
    """`SearchOptions` from the flags of `add_search_args` (and any others of its fields)."""
    from utils.photo_search import SearchOptions

    if args.video_fps < 0:
        raise UserError("--video_fps must be 0 (every frame) or more", f"--video_fps {args.video_fps}",
                        "pass 2 (two frames a second), or 0")
    names = {f for f in SearchOptions.__dataclass_fields__ if hasattr(args, f)}
    return SearchOptions(**{name: getattr(args, name) for name in names}, **settings)


def sam2_run(args, run: Run, head=None):
    """The SAM2 run of a script (utils/sam2_run.py), from its flags and run setup."""
    from utils.sam2_run import Sam2Run

    return Sam2Run.build(args.sam2_cfg, args.sam2_checkpoint, args.compile, run, head)


def add_ilias_source_args(parser) -> None:
    parser.add_argument("--source", choices=["hf", "local"], default="hf",
                        help="stream shards from the Hugging Face hub, or read them from --data_path")
    parser.add_argument("--data_path", default=BENCHMARKS["ilias"].default_path,
                        help="--source local: folder holding the shards (or ilias_core/)")
    for split in ilias_store.SPLITS:
        parser.add_argument(f"--{split}_repo", default=ilias_store.HUB_REPO,
                            help=f"--source hf: dataset repository of the {split} shards")
        parser.add_argument(f"--{split}_shards", nargs="+", default=ilias_store.SHARDS[split],
                            help=f"{split} shard files, in order (a name without .tar: ilias_core folder)")


def add_rerank_depth_arg(parser) -> None:
    parser.add_argument("--rerank_depth", type=positive_int, default=100,
                        help="first-stage candidates re-ranked by SAM2 per query (k <= the top-K width K)")


def add_ilias_dir_args(parser, *names: str) -> None:
    """The ILIAS steps' folders (`topk`, `features`, `images`), defaults from utils/ilias_store.py."""
    folders = {"topk": (ilias_store.TOPK_DIR, "holds topk_indices.npy, topk_scores.npy, topk_meta.json"),
               "features": (ilias_store.FEATURES_DIR, "features of every split, with their manifests"),
               "images": (ilias_store.IMAGES_DIR, "the extracted query, positive and candidate images")}
    for name in names:
        default, what = folders[name]
        parser.add_argument(f"--{name}_dir", default=default, help=what)


def data_path(args) -> Path:
    return Path(args.data_path or BENCHMARKS[args.dataset_file].default_path)


def setup(args, distributed: bool = True) -> Run:
    """The run setup (utils/dist.py) from a script's flags (a script without --device runs on the
    CPU); `distributed=False` for a step that runs as one process."""
    return setup_run(device=getattr(args, "device", "cpu"), amp=getattr(args, "amp", False),
                     pair_batch_size=getattr(args, "pair_batch_size", None),
                     num_workers=getattr(args, "num_workers", None), seed=getattr(args, "seed", 0),
                     timeout_s=getattr(args, "dist_timeout", DEFAULT_TIMEOUT_S), distributed=distributed)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table; floats with 2 decimals, None (no number) as n/a."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else "n/a" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w)
                                   for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def metric_row(name: str, metrics: dict, columns: list[str]) -> list:
    """A table row: the name, then the named metrics in the order of `columns`."""
    return [name, *(metrics[column] for column in columns)]


def run_record(args, run: Run | None = None) -> dict:
    """What made a result: every setting, the processes and device, the package versions, the
    code's git commit."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    placement = {"processes": run.world, "device": str(run.device)} if run is not None else {}
    return {"settings": settings, "command": " ".join(sys.argv), "versions": versions, **placement, **_git_state()}


def _git_state() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None}
    if commit.returncode != 0:
        return {"git_commit": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def finish(args, metrics: dict, table: str, run: Run | None = None, **work) -> dict:
    """Print the run's metric table and write the same numbers, with the run's record, to
    <output_dir>/metrics.json (`write_metrics`). Returns what was written."""
    print(table)
    path, written = write_metrics(args.output_dir, metrics, run_record(args, run), **work)
    print(f"metrics written to {path}")
    return written


def _interrupted(signum, frame):
    """Ctrl-C: stop at once. Every file is written to a temporary name and renamed, so nothing is
    half-written whenever this happens, and every long stage resumes. Exiting here, rather than
    raising KeyboardInterrupt wherever the main thread is, cannot leave a lock (a DataLoader's
    queues, say) taken and the process hung on its way out."""
    print("interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(130)


def run_cli(main, parser):
    """Parse the command line and run `main(args)` while holding the lock of its --output_dir
    (rank 0 holds it for a torchrun group); a `UserError` or Ctrl-C ends it with one line."""
    args = parser.parse_args()
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        if os.environ.get("RANK", "0") == "0":
            with OutputLock(args.output_dir):
                result = main(args)
        else:
            result = main(args)
        end_processes()
        return result
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGINT, previous)
