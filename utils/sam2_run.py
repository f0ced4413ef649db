"""One SAM2 run of a script: its model and engine, what identifies its numbers, and the loop that
scores a long stage's pairs in saved parts across the processes. Every SAM2 script builds one
(utils/cli.py `sam2_run`, from its flags and run setup) and keeps what is its own: episodes,
protocol, metric.

Parts (utils/io.py) carry the run's identity (config, checkpoint, amp, compile, head), so parts
or caches of another model never mix with this one's. Work is cut into chunks of `chunk_size`
units (objects, gallery images, candidate images, photos): by default about 256 chunks whatever
the number of processes, at least one unit each. So every process has a share (at least 4 chunks
each for up to 64 processes, where the work allows), the chunks, and with them every output
byte, are the same for 1 and N processes, and a resumed job keeps its chunks with any number.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

from utils.dist import Run, barrier, gather, sum_across_ranks, unfinished_share
from utils.io import Parts
from utils.pair_scoring import PairScheduler, score_in_parts
from utils.pseudo_video import PseudoVideo
from utils.sam2_model import build_sam2_model
from utils.score_head import load_head

AUTO_CHUNKS = 256


def chunk_size(requested: int | None, work: int) -> int:
    """Units of work per saved part: as asked, else the work cut into about `AUTO_CHUNKS` chunks
    (see the module docstring)."""
    return requested if requested is not None else max(1, math.ceil(work / AUTO_CHUNKS))


@dataclass(frozen=True)
class Head:
    """A trained score head to load (train_revisitop.py), and the protocol it must have been
    trained for."""
    checkpoint: str
    score: str
    query_prompt: str


@dataclass
class Sam2Run:
    engine: PseudoVideo
    run: Run
    identity: dict  # what makes its numbers: config, checkpoint, amp, compile, head
    pairs_scored: int = field(default=0)  # by this process

    @classmethod
    def build(cls, sam2_cfg: str, sam2_checkpoint: str | None, compiled: bool, run: Run,
              head: Head | None = None) -> "Sam2Run":
        model = build_sam2_model(sam2_cfg, sam2_checkpoint, run.device)
        identity = {"sam2_cfg": sam2_cfg, "sam2_checkpoint": sam2_checkpoint, "amp": run.amp, "compile": compiled}
        if head is not None:
            load_head(model, head.checkpoint, head.score, head.query_prompt)
            identity["head_checkpoint"] = head.checkpoint
        return cls(PseudoVideo(model, run.amp, compiled, run.pair_batch_size), run, identity)

    def parts(self, folder, **settings) -> Parts:
        """The saved parts of a stage of this run: `settings` are the stage's own (data, protocol,
        chunk size), to which the run's identity is added."""
        return Parts(folder, {**settings, **self.identity})

    def scheduler(self, open_image: Callable) -> PairScheduler:
        return PairScheduler(self.engine, open_image, self.run.pair_batch_size, self.run.num_workers)

    def score_in_parts(self, parts: Parts, chunks: Sequence[Sequence[tuple[Hashable, str]]], references,
                       open_image: Callable, with_masks: bool = False, on_result=None, desc: str | None = None,
                       keep_going: tuple = ()) -> None:
        """Score the pairs of the chunks not saved yet, this process's share of them, each chunk
        saved as a part when done (utils/pair_scoring.py `score_in_parts`); returns when every
        process is done. `keep_going`: kinds of unreadable images that skip their pairs instead
        of stopping the run."""
        mine = unfinished_share(parts, len(chunks), self.run)
        self.pairs_scored += sum(len(chunks[c]) for c in mine)
        score_in_parts(self.scheduler(open_image), parts, chunks, mine, references, with_masks=with_masks,
                       on_result=on_result, desc=self.run.label(desc) if desc else None, keep_going=keep_going)
        barrier()

    def reset(self) -> None:
        """Forget every cached image and count afresh: the next scoring equals a fresh process's
        (a long-lived page calls it after every search, whether it succeeded or failed)."""
        self.engine.clear()
        self.pairs_scored = 0

    def work(self) -> dict:
        """How the work went, for the run record: image encoder passes (every process), pairs
        scored by each process (a resumed run counts only what it scored)."""
        return {"encoder_passes": sum_across_ranks(self.engine.encoder_passes),
                "pairs_per_process": gather(self.pairs_scored)}
