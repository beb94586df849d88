"""The scores, all by onnxruntime (CPU) on the evaluation sentences only."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.stats import spearmanr

from tools.minilm_bench.common import BATCH, LATENCY_BATCHES, LATENCY_SEQ, PAIRS, QUERIES, SEED

__all__ = ["Reference", "embed", "latencies", "scores", "session"]


def session(path: Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU session of a file (or a serialized model)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def embed(path: Path, feeds: dict[str, np.ndarray], batch: int = BATCH) -> np.ndarray:
    """The model's output (the sentence embeddings) for every row of ``feeds``."""
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    rows = len(next(iter(feeds.values())))
    out = [
        sess.run(None, {n: feeds[n][i : i + batch] for n in names})[0]
        for i in range(0, rows, batch)
    ]
    return np.concatenate(out).astype(np.float64)


class Reference:
    """The original model's embeddings of the evaluation sentences and what the scores
    compare against: the 200 seeded queries' ten nearest neighbours and the seeded pairs'
    similarities."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = embeddings
        n = len(embeddings)
        rng = np.random.default_rng(SEED)
        self.queries = np.sort(rng.choice(n, size=min(QUERIES, n), replace=False))
        self.neighbours = _neighbours(embeddings, self.queries)
        i = rng.integers(0, n, size=PAIRS)
        j = rng.integers(0, n - 1, size=PAIRS)
        j = j + (j >= i)  # never a sentence with itself
        self.pairs = (i, j)
        self.similarities = _pair_similarities(embeddings, self.pairs)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _neighbours(embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    e = _unit(embeddings)
    sims = e[queries] @ e.T
    sims[np.arange(len(queries)), queries] = -np.inf  # against the rest
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _pair_similarities(embeddings: np.ndarray, pairs) -> np.ndarray:
    e = _unit(embeddings)
    return np.einsum("ij,ij->i", e[pairs[0]], e[pairs[1]])


def scores(reference: Reference, embeddings: np.ndarray) -> dict[str, float]:
    """Cosine similarity of each sentence's embedding to the original's (mean, 5th
    percentile, minimum), recall@10 of the original's neighbours of the queries, and the
    Spearman correlation of the pairs' similarities."""
    cosine = np.einsum("ij,ij->i", _unit(embeddings), _unit(reference.embeddings))
    found = _neighbours(embeddings, reference.queries)
    recall = np.mean(
        [len(set(a) & set(b)) / a.size for a, b in zip(reference.neighbours, found, strict=True)]
    )
    rho = spearmanr(reference.similarities, _pair_similarities(embeddings, reference.pairs))
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_p5": float(np.percentile(cosine, 5)),
        "cosine_min": float(cosine.min()),
        "recall10": float(recall),
        "spearman": float(rho.statistic),
    }


def latencies(
    original: Path, compressed: Path, feeds: dict[str, np.ndarray], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Median latency (ms) of one run at each batch size of :data:`LATENCY_BATCHES`
    (sequence :data:`LATENCY_SEQ`, one intra-op thread) of both models, timed interleaved
    (original then compressed, then the other way round, ...) after a warm-up. Returns
    the compressed model's, the original's and their ratios, keyed ``b1``, ``b32``.
    Batch 1 is timed over 10 runs per repeat."""
    sessions = [session(original, threads=1), session(compressed, threads=1)]
    times = {}
    for batch in LATENCY_BATCHES:
        inner = 10 if batch == 1 else 1
        per = [[], []]
        for sess in sessions:  # warm-up
            sess.run(None, _feeds(sess, feeds, batch))
        for repeat in range(repeats):
            order = (0, 1) if repeat % 2 == 0 else (1, 0)  # alternate who runs first
            for which in order:
                sess = sessions[which]
                feed = _feeds(sess, feeds, batch)
                started = time.perf_counter()
                for _ in range(inner):
                    sess.run(None, feed)
                per[which].append(1000 * (time.perf_counter() - started) / inner)
        times[f"b{batch}"] = (float(np.median(per[0])), float(np.median(per[1])))
    before = {k: v[0] for k, v in times.items()}
    after = {k: v[1] for k, v in times.items()}
    ratio = {k: v[1] / v[0] for k, v in times.items()}
    return after, before, ratio


def _feeds(sess, feeds, batch):
    assert len(next(iter(feeds.values()))) >= batch and LATENCY_SEQ == feeds["input_ids"].shape[1]
    return {i.name: feeds[i.name][:batch] for i in sess.get_inputs()}
