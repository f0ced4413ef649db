"""Top-K: time and peak memory (each search in a process of its own) of the sharded search against
one flat search over everything; the results must be identical."""
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np

from bench_suites.common import Context


def _search(mode: str, folder: str, queries_path: str, k: int, connection) -> None:
    """Run one search in a fresh process; send (seconds, peak RSS in MB, indices)."""
    from utils.retrieval import shard_search, sharded_topk

    queries = np.load(queries_path)
    shards = sorted(Path(folder).glob("shard_*.npy"))
    start = time.perf_counter()
    if mode == "sharded":
        _, indices = sharded_topk(queries, (np.load(s) for s in shards), k)
    elif mode == "flat":
        database = np.concatenate([np.load(s) for s in shards])
        scores, indices = shard_search(queries, database, k)
        order = np.lexsort((indices, -scores), axis=1)  # ties by the lower index, as the merge does
        indices = np.take_along_axis(indices, order, axis=1)
    else:  # the process's own footprint: numpy, faiss and the queries
        import faiss  # noqa: F401  (imported for its memory)
        indices = np.zeros((len(queries), k), np.int64)
    seconds = time.perf_counter() - start
    connection.send((seconds, peak_memory_mb(), indices))


def peak_memory_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: a spawned child inherits the
    parent's ru_maxrss through exec, so it would report the (large) benchmark process."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_process(*args):
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_search, args=(*args, sender))
    process.start()
    sender.close()  # so that a crashed child ends recv() instead of leaving it waiting
    try:
        result = receiver.recv()
    except EOFError:
        raise RuntimeError(f"the {args[0]} search process died (exit code {process.exitcode})") from None
    finally:
        process.join()
    return result


def measure(ctx: Context) -> dict:
    args, folder = ctx.args, ctx.folder / "topk"
    folder.mkdir()
    size = args.topk_database or (200_000 if ctx.quick else 1_000_000)
    shard = args.topk_shard or (20_000 if ctx.quick else 100_000)
    n_queries, k, dim = args.topk_queries or (200 if ctx.quick else 1000), 100, 384
    rng = np.random.default_rng(args.seed)
    for s, start in enumerate(range(0, size, shard)):
        block = rng.standard_normal((min(shard, size - start), dim)).astype(np.float32)
        np.save(folder / f"shard_{s:05d}.npy", block / np.linalg.norm(block, axis=1, keepdims=True))
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    np.save(folder / "queries.npy", queries / np.linalg.norm(queries, axis=1, keepdims=True))
    base, sharded, flat = (run_in_process(mode, str(folder), str(folder / "queries.npy"), k)
                           for mode in ("baseline", "sharded", "flat"))
    return {"database": size, "shard": shard, "queries": n_queries, "k": k,
            "sharded_s": sharded[0], "flat_s": flat[0],
            "sharded_peak_mb": sharded[1] - base[1], "flat_peak_mb": flat[1] - base[1],
            "one_shard_mb": shard * dim * 4 / 2**20, "database_mb": size * dim * 4 / 2**20,
            "identical": bool(np.array_equal(sharded[2], flat[2]))}


def rows(results: dict) -> list[list]:
    r = results["topk"]
    return [[f"top-K {r['database']:,} x 384: s sharded | flat", f"{r['sharded_s']:.2f} | {r['flat_s']:.2f}", "", "",
             f"peak MB {r['sharded_peak_mb']:.0f} vs {r['flat_peak_mb']:.0f} (one shard {r['one_shard_mb']:.0f}); "
             f"identical: {r['identical']}"]]
