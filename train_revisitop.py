"""Train SAM2's score head with a lazy triplet loss (Revisited Oxford/Paris, or UnED).

    python train_revisitop.py --dataset_file revisitop --data_path datasets/revisitop \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt \
        --output_dir outputs/head_revisitop [--val_fraction 0]

The score that re-ranks works without training; this makes it sharper. For an anchor a, a positive
p (another image of its class) and M negatives n, the SAM2 score s(a, x) of the pseudo-video
[a, x] enters L = max over n of max(0, margin - s(a, p) + s(a, n)), averaged over the triplets of
a step. The anchor is prompted as queries are at ILIAS inference: the whole image with its box
(revisitop queries: `bbx`), or the whole image as the box (UnED). Only the head that produces the
chosen score (IoU head for `iou`, object-score head for `object`, both for `iou_x_object`) is
trained; SAM2 stays frozen before it. A held-out part of the classes (--val_fraction; 0: train on
every class, no validation) gives, each epoch, the triplet accuracy and the mAP of ranking each
held-out anchor's positives among sampled negatives (revisitop E/M/H protocols). Writes
<output_dir>/head_epoch<N>.pt, head_last.pt, head_best.pt (with validation), last.pt (for
--resume) and metrics.json (formats: utils/score_head.py). Next: sam2_reranking.py --head_checkpoint.
"""
from pathlib import Path

import numpy as np
import torch
from utils.cli import (CliParser, add_dataset_args, add_output_args, add_sam2_args, data_path, finish, format_table,
                       positive_int, run_cli, run_record, sam2_run, setup)
from utils.dist import Run, map_shared, sum_across_ranks, sum_gradients
from utils.errors import UserError
from utils.images import image_size, open_image
from utils.loaders.revisitop import NAMES, load_revisitop
from utils.loaders.uned import DOMAINS, load_uned
from utils.loops import batched, progress
from utils.metrics import revisitop_map, revisitop_protocol
from utils.pair_scoring import PairScheduler
from utils.prompts import QUERY_PROMPTS, Prompt, ReferenceFrame, query_prompt
from utils.pseudo_video import SCORES
from utils.score_head import head_record, head_tensors, resume, save_epoch
from utils.training import TripletData, TripletSampler, lazy_triplet_losses, split_classes

PROTOCOLS = ("easy", "medium", "hard")


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_dataset_args(parser, [*NAMES, "revisitop", "uned"])
    parser.add_argument("--uned_domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--uned_split", default="train")
    add_sam2_args(parser, "pairs per SAM2 forward (a step has triplets_per_step x (1 + num_negatives) pairs)")
    parser.add_argument("--score", choices=SCORES, default="iou")
    parser.add_argument("--query_prompt", choices=QUERY_PROMPTS, default="box",
                        help="how an anchor shows its object, as sam2_reranking.py --query_prompt: its box, or its "
                             "box filled as a mask")
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--num_negatives", type=positive_int, default=4)
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--samples_per_epoch", type=positive_int, default=1000, help="triplets per epoch")
    parser.add_argument("--triplets_per_step", type=positive_int, default=8, help="triplets per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--val_fraction", type=float, default=0.2,
                        help="share of classes held out (0: train on every class, keep the last head)")
    parser.add_argument("--val_anchors", type=positive_int, default=50, help="held-out anchors evaluated")
    parser.add_argument("--val_negatives", type=positive_int, default=20, help="negatives ranked per held-out anchor")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pt")
    add_output_args(parser, "outputs/head")
    return parser


def load_data(dataset: str, root: Path, uned_domains: list[str], uned_split: str) -> TripletData:
    if dataset == "uned":
        return load_uned(root, uned_domains, uned_split)
    return load_revisitop(root, list(NAMES) if dataset == "revisitop" else [dataset])


class TripletScorer:
    """SAM2 scores of (anchor, target) items through the pair scheduler: the anchor prompted as a
    query is at re-ranking (`query_prompt`) with its box, else with its whole image as the box.
    Each call encodes each of its images once (items of one file share an image id) and builds
    each anchor's memory once."""

    def __init__(self, scheduler: PairScheduler, data: TripletData, score: str, prompt: str = "box"):
        self.scheduler, self.data, self.score, self.query_prompt = scheduler, data, score, prompt

    def prompt(self, anchor: int) -> Prompt:
        item = self.data.items[anchor]
        if item.box is not None:
            return query_prompt(item.box, self.query_prompt)
        height, width = image_size(item.path)
        return query_prompt((0, 0, width, height), self.query_prompt)

    def __call__(self, pairs: list[tuple[int, int]], grad: bool = False) -> torch.Tensor:
        path = lambda index: str(self.data.items[index].path)
        references = {a: [ReferenceFrame(path(a), self.prompt(a))] for a in dict.fromkeys(a for a, _ in pairs)}
        return self.scheduler.scores([(a, path(t)) for a, t in pairs], references, self.score, grad=grad)


def triplet_scores(scorer: TripletScorer, triplets, grad: bool):
    """s(a, p) [B] and s(a, n) [B, M] of a batch of triplets."""
    pairs = [(a, x) for a, p, negatives in triplets for x in [p, *negatives]]
    scores = scorer(pairs, grad=grad).reshape(len(triplets), -1)
    return scores[:, 0], scores[:, 1:]


def validation_sets(data: TripletData, sampler: TripletSampler, num_anchors: int, num_negatives: int,
                    val_negatives: int, seed: int):
    """Fixed held-out triplets, and per held-out anchor a ranking task (all its positives and
    sampled negatives, with the E/M/H ground truth for revisitop queries)."""
    rng = np.random.default_rng([seed, 2**20])
    triplets = sampler.sample(rng, min(num_anchors, 4 * len(sampler.anchors)), num_negatives)
    anchors = [sampler.anchors[i] for i in rng.permutation(len(sampler.anchors))[:num_anchors]]
    tasks = []
    for anchor in anchors:
        truth = data.query_truth.get(anchor)
        positives = truth["easy"] + truth["hard"] if truth else sampler.valid_positives(anchor)
        negatives = sampler.sample_negatives(rng, anchor, val_negatives)
        candidates = positives + [n for n in negatives if n not in positives]
        if truth:
            gnd = {p: revisitop_protocol([candidates.index(i) for i in truth["easy"]],
                                         [candidates.index(i) for i in truth["hard"]], [], p) for p in PROTOCOLS}
        else:
            gnd = {"all": {"ok": list(range(len(positives))), "junk": []}}
        tasks.append((anchor, candidates, gnd))
    return triplets, tasks


def train_step(scorer: TripletScorer, batch: list, margin: float, optimizer, head: list, run: Run) -> float:
    """One optimizer step on a batch of triplets, data-parallel: each rank scores its share (every
    world-th triplet), its loss is its triplets' losses summed over the batch size, and the head's
    gradients are summed over the ranks, so every rank takes the step one process would take on
    the whole batch. Returns the batch's loss (the mean over its triplets)."""
    mine = batch[run.rank::run.world]
    optimizer.zero_grad()
    loss = 0.0
    if mine:
        positive, negatives = triplet_scores(scorer, mine, grad=True)
        share = lazy_triplet_losses(positive, negatives, margin).sum() / len(batch)
        share.backward()
        loss = share.item()
    sum_gradients(head)
    optimizer.step()
    return sum_across_ranks(loss)


@torch.no_grad()
def validate(scorer: TripletScorer, triplets, tasks, triplets_per_step: int, run: Run) -> dict:
    """Triplet accuracy and ranking mAP of the held-out sets; the ranks share the work."""
    def positive_and_hardest(batch):
        p, n = triplet_scores(scorer, batch, grad=False)
        return p, n.max(dim=1).values

    scored = map_shared(positive_and_hardest, list(batched(triplets, triplets_per_step)), run)
    accuracy = (torch.cat([p for p, _ in scored]) > torch.cat([n for _, n in scored])).float().mean().item()
    results = {"triplet_accuracy": 100 * accuracy}
    ranked = map_shared(lambda task: np.argsort(-scorer([(task[0], c) for c in task[1]]).numpy(), kind="stable"),
                        tasks, run)
    rankings, ground_truths = {}, {}
    for ranking, (_, _, gnd) in zip(ranked, tasks):
        for protocol, truth in gnd.items():
            rankings.setdefault(protocol, []).append(ranking)
            ground_truths.setdefault(protocol, []).append(truth)
    for protocol in rankings:
        width = max(len(r) for r in rankings[protocol])
        padded = np.array([np.r_[r, np.full(width - len(r), -1)] for r in rankings[protocol]])
        mean_ap = revisitop_map(padded, ground_truths[protocol])[0]
        results[f"map_{protocol}"] = None if mean_ap is None else 100 * mean_ap  # None: no query has a positive
    results["map"] = results.get("map_medium", results.get("map_all"))
    return results


def main(args) -> dict:
    if not 0 <= args.val_fraction < 1:
        raise UserError("--val_fraction must be in [0, 1)", f"--val_fraction {args.val_fraction}",
                        "pass 0 (train on every class, no validation) or a share such as 0.2")
    run = setup(args)
    data = load_data(args.dataset_file, data_path(args), args.uned_domains, args.uned_split)
    train_classes, val_classes = split_classes(data, args.val_fraction, args.seed)
    train, val = TripletSampler(data, train_classes), TripletSampler(data, val_classes)
    if not train.anchors or (args.val_fraction > 0 and not val.anchors):
        raise UserError("too few classes with two or more members to train and validate", "--dataset_file",
                        "use more data, or --val_fraction 0 to train on every class")
    if run.is_main:
        print(f"{len(train_classes)} training classes ({len(train.anchors)} anchors), {len(val_classes)} held out "
              f"({len(val.anchors)} anchors); skipped {train.dropped + val.dropped} anchors whose class has no "
              f"other member")

    sam2 = sam2_run(args, run)
    model = sam2.engine.model
    head = head_tensors(model, args.score)
    for parameter in head.values():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(head.values()), lr=args.lr, weight_decay=args.weight_decay)
    output_dir = Path(args.output_dir)
    first_epoch, history = resume(output_dir, model, optimizer, args.score, args.query_prompt,
                                                       run.is_main) if args.resume else (1, [])
    scorer = TripletScorer(sam2.scheduler(open_image), data, args.score, args.query_prompt)
    val_triplets, val_tasks = validation_sets(data, val, args.val_anchors, args.num_negatives, args.val_negatives,
                                              args.seed) if val.anchors else ([], [])
    record = run_record(args, run)

    for epoch in range(first_epoch, args.epochs + 1):
        triplets = train.sample(np.random.default_rng([args.seed, epoch]), args.samples_per_epoch, args.num_negatives)
        losses = [train_step(scorer, batch, args.margin, optimizer, list(head.values()), run)
                  for batch in progress(list(batched(triplets, args.triplets_per_step)), desc=f"epoch {epoch}",
                                        unit="step")]
        results = {"epoch": epoch, "loss": float(np.mean(losses))}
        if val.anchors:
            results.update(validate(scorer, val_triplets, val_tasks, args.triplets_per_step, run))
        history.append(results)
        if run.is_main:
            save_epoch(output_dir, head_record(model, args.score, args.query_prompt, args.sam2_cfg, epoch, results,
                                               record), history, optimizer)
    if not run.is_main:
        return {}

    columns = [c for c in history[0] if c != "epoch"]
    table = format_table(["epoch", *columns], [[h["epoch"], *(h[c] for c in columns)] for h in history])
    if not val.anchors:
        table += f"\nno validation (--val_fraction 0): the last head -> {output_dir / 'head_last.pt'}"
        return finish(args, {"history": history}, table, run)
    best = max(history, key=lambda h: -1.0 if h["map"] is None else h["map"])
    held_out = "n/a" if best["map"] is None else f"{best['map']:.2f}"
    table += f"\nbest epoch {best['epoch']} (held-out mAP {held_out}) -> {output_dir / 'head_best.pt'}"
    return finish(args, {"history": history, "best_epoch": best["epoch"], "best": best}, table, run)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
