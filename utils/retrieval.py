"""Exact inner-product search over a sharded database, with a running top-K merge, so memory
is bounded by one shard (plus queries x K), not by the database."""
import numpy as np


def shard_search(queries: np.ndarray, shard: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-min(k, n) inner products of the queries in one shard, with faiss's brute-force
    kNN (on the GPU when faiss has one): no index is built, so the shard is not copied. Returns
    scores and shard-local indices (among equal scores, the lower indices are kept)."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    shard = np.ascontiguousarray(shard, np.float32)
    k = min(k, len(shard))
    if hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0:
        return faiss.knn_gpu(faiss.StandardGpuResources(), queries, shard, k, metric=faiss.METRIC_INNER_PRODUCT)
    return faiss.knn(queries, shard, k, metric=faiss.METRIC_INNER_PRODUCT)


def merge_topk(scores: np.ndarray, indices: np.ndarray, new_scores: np.ndarray, new_indices: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of two candidate lists per query, by decreasing score, ties broken by the lower
    global index (so the result does not depend on how the database was sharded)."""
    all_scores = np.concatenate([scores, new_scores], axis=1)
    all_indices = np.concatenate([indices, new_indices], axis=1)
    order = np.lexsort((all_indices, -all_scores), axis=1)[:, :k]
    return np.take_along_axis(all_scores, order, axis=1), np.take_along_axis(all_indices, order, axis=1)


def sharded_topk(queries: np.ndarray, shards, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over shards given as an iterable of feature arrays (global index = running
    offset). Only one shard is in memory at a time."""
    scores = np.zeros((len(queries), 0), np.float32)
    indices = np.zeros((len(queries), 0), np.int64)
    offset = 0
    for shard in shards:
        if len(shard):
            shard_scores, local = shard_search(queries, shard, k)
            scores, indices = merge_topk(scores, indices, shard_scores, local.astype(np.int64) + offset, k)
        offset += len(shard)
        del shard  # before the next one is read: never two shards in memory
    return scores, indices
