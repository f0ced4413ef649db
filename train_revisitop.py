"""Train SAM2's score head with a lazy triplet loss (Revisited Oxford/Paris, or UnED).

    python train_revisitop.py --dataset_file revisitop --data_path datasets/revisitop \
        --sam2_cfg configs/sam2.1/sam2.1_hiera_l.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_large.pt \
        --output_dir outputs/head_revisitop

The score that re-ranks works without training; this makes it sharper. For an anchor a, a positive
p (another image of its class) and M negatives n, the SAM2 score s(a, x) of the pseudo-video
[a, x] (anchor prompted with its whole image, after its box crop for revisitop queries) enters
L = max over n of max(0, margin - s(a, p) + s(a, n)), averaged over the batch. Only the head that
produces the chosen score (IoU head for `iou`, object-score head for `object`, both for
`iou_x_object`) is trained; SAM2 stays frozen before it. A held-out part of the classes gives,
each epoch, the triplet accuracy and the mAP of ranking each held-out anchor's positives among
sampled negatives (revisitop E/M/H protocols). Writes <output_dir>/head_epoch<N>.pt,
head_best.pt (for sam2_reranking.py --head_checkpoint), last.pt (for --resume) and metrics.json.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from utils.cli import batched, check_positive, finish, format_table, progress, set_seed
from utils.errors import CliParser, UserError, run_cli
from utils.io import save_pt
from utils.loaders.common import open_image
from utils.loaders.revisitop import NAMES, load_revisitop
from utils.loaders.uned import DOMAINS, load_uned
from utils.metrics import revisitop_map, revisitop_protocol
from utils.pseudo_video import SCORES, PseudoVideo
from utils.sam2_model import (add_sam2_args, architecture_signature, build_sam2_model, head_tensors,
                              resolve_device)
from utils.training import TripletSampler, lazy_triplet_loss, split_classes

PROTOCOLS = ("easy", "medium", "hard")


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_file", required=True, choices=[*NAMES, "revisitop", "uned"])
    parser.add_argument("--data_path", default=None,
                        help="revisitop root holding <name>/gnd_<name>.pkl (default datasets/revisitop), "
                             "or the UnED root (default datasets/uned)")
    parser.add_argument("--uned_domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--uned_split", default="train")
    add_sam2_args(parser)
    parser.add_argument("--score", choices=SCORES, default="iou")
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--num_negatives", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples_per_epoch", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of classes held out")
    parser.add_argument("--val_anchors", type=int, default=50, help="held-out anchors evaluated")
    parser.add_argument("--val_negatives", type=int, default=20, help="negatives ranked per held-out anchor")
    parser.add_argument("--output_dir", default="outputs/head")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last.pt")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def load_data(args):
    if args.dataset_file == "uned":
        return load_uned(Path(args.data_path or "datasets/uned"), args.uned_domains, args.uned_split)
    names = list(NAMES) if args.dataset_file == "revisitop" else [args.dataset_file]
    return load_revisitop(Path(args.data_path or "datasets/revisitop"), names)


class PairScorer:
    """SAM2 scores of (anchor, target) items: the anchor prompted with its box (revisitop queries,
    as ILIAS queries are at inference), else with its whole image. Each call encodes each of its
    images once and builds each anchor's memory once, then scores the pairs `batch_size` at a time."""

    def __init__(self, engine: PseudoVideo, data, score: str, batch_size: int):
        self.engine, self.data, self.score, self.batch_size = engine, data, score, batch_size

    def frame(self, index: int):
        item = self.data.items[index]
        return self.engine.prepare(open_image(item.path), image_id=str(item.path))

    def __call__(self, pairs: list[tuple[int, int]], grad: bool = False) -> torch.Tensor:
        frames = {i: self.frame(i) for i in sorted({i for pair in pairs for i in pair})}
        references = {a: self.engine.encode_reference([frames[a]], boxes=[self.data.items[a].box or
                                                                          (0, 0, frames[a].width, frames[a].height)])
                      for a in sorted({a for a, _ in pairs})}
        scores = torch.cat([self.engine.score_pairs([references[a] for a, _ in chunk], [frames[t] for _, t in chunk],
                                                    with_masks=False, grad=grad).score(self.score)
                            for chunk in batched(pairs, self.batch_size)])
        self.engine.forget([str(self.data.items[i].path) for i in frames])
        return scores


def triplet_scores(scorer: PairScorer, triplets, grad: bool):
    """s(a, p) [B] and s(a, n) [B, M] of a batch of triplets."""
    pairs = [(a, x) for a, p, negatives in triplets for x in [p, *negatives]]
    scores = scorer(pairs, grad=grad).reshape(len(triplets), -1)
    return scores[:, 0], scores[:, 1:]


def validation_sets(args, data, sampler: TripletSampler):
    """Fixed held-out triplets, and per held-out anchor a ranking task (its positives and
    sampled negatives, with the E/M/H ground truth for revisitop queries)."""
    rng = np.random.default_rng([args.seed, 2**20])
    triplets = sampler.sample(rng, min(args.val_anchors, 4 * len(sampler.anchors)), args.num_negatives)
    anchors = [sampler.anchors[i] for i in rng.permutation(len(sampler.anchors))[:args.val_anchors]]
    tasks = []
    for anchor in anchors:
        truth = data.query_truth.get(anchor)
        positives = truth["easy"] + truth["hard"] if truth else sampler.valid_positives(anchor)
        negatives = sampler.sample_negatives(rng, anchor, args.val_negatives)
        candidates = positives + [n for n in negatives if n not in positives]
        if truth:
            gnd = {p: revisitop_protocol([candidates.index(i) for i in truth["easy"]],
                                         [candidates.index(i) for i in truth["hard"]], [], p) for p in PROTOCOLS}
        else:
            gnd = {"all": {"ok": list(range(len(positives))), "junk": []}}
        tasks.append((anchor, candidates, gnd))
    return triplets, tasks


@torch.no_grad()
def validate(args, scorer: PairScorer, triplets, tasks) -> dict:
    positive, negatives = [], []
    for batch in batched(triplets, args.batch_size):
        p, n = triplet_scores(scorer, batch, grad=False)
        positive.append(p)
        negatives.append(n)
    accuracy = (torch.cat(positive) > torch.cat(negatives).max(dim=1).values).float().mean().item()
    results = {"triplet_accuracy": 100 * accuracy}
    rankings, ground_truths = {}, {}
    for anchor, candidates, gnd in tasks:
        scores = scorer([(anchor, c) for c in candidates])
        ranking = np.argsort(-scores.numpy(), kind="stable")
        for protocol, truth in gnd.items():
            rankings.setdefault(protocol, []).append(ranking)
            ground_truths.setdefault(protocol, []).append(truth)
    for protocol in rankings:
        width = max(len(r) for r in rankings[protocol])
        padded = np.array([np.r_[r, np.full(width - len(r), -1)] for r in rankings[protocol]])
        results[f"map_{protocol}"] = 100 * revisitop_map(padded, ground_truths[protocol])[0]
    results["map"] = results.get("map_medium", results.get("map_all"))
    return results


def head_record(args, model, epoch: int, val: dict) -> dict:
    return {"head": {name: p.detach().cpu().clone() for name, p in head_tensors(model, args.score).items()},
            "architecture": architecture_signature(model), "sam2_cfg": args.sam2_cfg, "score": args.score,
            "epoch": epoch, "val": val}


def save_checkpoints(output_dir: Path, record: dict, history: list, optimizer) -> None:
    """last.pt first (the resume point), then the epoch's head and, if best so far, head_best.pt.
    A resumed run writes the heads again from last.pt: a kill between the files loses none."""
    save_pt(output_dir / "last.pt", {**record, "optimizer": optimizer.state_dict(), "history": history})
    write_heads(output_dir, record, history)


def write_heads(output_dir: Path, record: dict, history: list) -> None:
    """head_epoch<N>.pt and head_last.pt; with validation, head_best.pt if the best so far."""
    save_pt(output_dir / f"head_epoch{record['epoch']}.pt", record)
    save_pt(output_dir / "head_last.pt", record)
    if "map" in record["val"] and record["val"]["map"] >= max(h["map"] for h in history):
        save_pt(output_dir / "head_best.pt", record)


def resume_state(args, model, optimizer) -> tuple[int, list]:
    path = Path(args.output_dir) / "last.pt"
    if not path.is_file():
        raise UserError("nothing to resume", str(path), "start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["architecture"] != architecture_signature(model) or state["score"] != args.score:
        raise UserError(f"last.pt trains the {state['score']} head of another model ({state['sam2_cfg']})",
                        str(path), "resume with the same --sam2_cfg and --score, or use another --output_dir")
    model.load_state_dict(state["head"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    write_heads(path.parent, {k: v for k, v in state.items() if k not in ("optimizer", "history")}, state["history"])
    return state["epoch"] + 1, state["history"]


def main(args) -> dict:
    for value, flag in ((args.batch_size, "--batch_size"), (args.epochs, "--epochs"),
                        (args.samples_per_epoch, "--samples_per_epoch"), (args.num_negatives, "--num_negatives")):
        check_positive(value, flag)
    set_seed(args.seed)
    data = load_data(args)
    if not 0 <= args.val_fraction < 1:
        raise UserError("--val_fraction must be in [0, 1)", f"--val_fraction {args.val_fraction}",
                        "pass 0 (train on every class, no validation) or a share such as 0.2")
    train_classes, val_classes = split_classes(data, args.val_fraction, args.seed)
    train, val = TripletSampler(data, train_classes), TripletSampler(data, val_classes)
    if not train.anchors or (args.val_fraction > 0 and not val.anchors):
        raise UserError("too few classes with two or more members to train and validate", "--dataset_file",
                        "use more data, or --val_fraction 0 to train on every class")
    print(f"{len(train_classes)} training classes ({len(train.anchors)} anchors), {len(val_classes)} held out "
          f"({len(val.anchors)} anchors); skipped {train.dropped + val.dropped} anchors whose class has no "
          f"other member")

    device = resolve_device(args.device)
    model = build_sam2_model(args.sam2_cfg, args.sam2_checkpoint, device)
    head = head_tensors(model, args.score)
    for parameter in head.values():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(head.values()), lr=args.lr, weight_decay=args.weight_decay)
    first_epoch, history = resume_state(args, model, optimizer) if args.resume else (1, [])
    scorer = PairScorer(PseudoVideo(model, amp=args.amp), data, args.score, args.batch_size)
    val_triplets, val_tasks = validation_sets(args, data, val) if val.anchors else ([], [])
    output_dir = Path(args.output_dir)

    for epoch in range(first_epoch, args.epochs + 1):
        triplets = train.sample(np.random.default_rng([args.seed, epoch]), args.samples_per_epoch, args.num_negatives)
        losses = []
        for batch in progress(list(batched(triplets, args.batch_size)), desc=f"epoch {epoch}", unit="step"):
            positive, negatives = triplet_scores(scorer, batch, grad=True)
            loss = lazy_triplet_loss(positive, negatives, args.margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        results = {"epoch": epoch, "loss": float(np.mean(losses))}
        if val.anchors:
            results.update(validate(args, scorer, val_triplets, val_tasks))
        history.append(results)
        save_checkpoints(output_dir, head_record(args, model, epoch, results), history, optimizer)

    columns = [c for c in history[0] if c != "epoch"]
    table = format_table(["epoch", *columns], [[h["epoch"], *(h[c] for c in columns)] for h in history])
    if not val.anchors:
        table += f"\nno validation (--val_fraction 0): the last head -> {output_dir / 'head_last.pt'}"
        return finish(output_dir, {"history": history}, table)
    best = max(history, key=lambda h: h["map"])
    table += f"\nbest epoch {best['epoch']} (held-out mAP {best['map']:.2f}) -> {output_dir / 'head_best.pt'}"
    return finish(output_dir, {"history": history, "best_epoch": best["epoch"], "best": best}, table)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
