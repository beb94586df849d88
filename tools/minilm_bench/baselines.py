"""The two closed-form baselines, in numpy (float64).

Per FFN block, on the calibration rows that are real tokens (``attention_mask == 1``),
with the activations ``A`` (the tensor entering the down-projection, GELU of the
up-projection) read from the original model by onnxruntime as extra graph outputs:

- ``topact``: keep the ``k`` neurons with the largest mean ``|A|``;
- ``id``: interpolative decomposition: the first ``k`` pivots of a column-pivoted QR of
  the centred activations (computed on the Cholesky factor of their Gram matrix, which
  has the same pivots in exact arithmetic; centring is what the refit's bias absorbs).

Both then keep those neurons' up-projection columns and biases as they were and refit
the down-projection (weights and bias) by least squares onto the original FFN's output
``A W2 + b2``. ``k = round(share * 1536)`` in every block."""

from __future__ import annotations

import numpy as np
import onnx
import scipy.linalg
from scipy.special import erf

from tools.minilm_bench.common import BATCH, BLOCKS, INNER, log
from tools.minilm_bench.graph import Ffn, ffns, set_ffn, weights, with_outputs
from tools.minilm_bench.metrics import session

__all__ = ["BASELINES", "baseline", "gather", "select"]

BASELINES = ("topact", "id")
_CHECKED = 2000  # rows on which the activations are checked against GELU(x W1 + b1)


def gather(model: onnx.ModelProto, blocks: list[Ffn], feeds: dict[str, np.ndarray]):
    """``[(X, A)]`` per block: the FFN's input and activations on the real-token rows of
    ``feeds``, checked against ``GELU(X W1 + b1)`` (the walk found a true FFN)."""
    names = [n for f in blocks for n in (f.up.input, f.down.input)]
    probe = with_outputs(model, names)
    sess = session(probe.SerializeToString())
    wanted = [o.name for o in sess.get_outputs()]
    columns = {n: [] for n in names}
    rows = len(feeds["input_ids"])
    for i in range(0, rows, BATCH):
        feed = {k.name: feeds[k.name][i : i + BATCH] for k in sess.get_inputs()}
        real = feed["attention_mask"].reshape(-1) == 1
        for name, value in zip(wanted, sess.run(wanted, feed), strict=True):
            if name in columns:
                columns[name].append(value.reshape(real.size, -1)[real])
    pairs = []
    for f in blocks:
        x = np.concatenate(columns.pop(f.up.input)).astype(np.float64)
        a = np.concatenate(columns.pop(f.down.input)).astype(np.float64)
        w1, b1, _, _ = weights(model, f)
        z = x[:_CHECKED] @ w1 + b1
        check = 0.5 * z * (1 + erf(z / np.sqrt(2)))
        error = np.linalg.norm(check - a[:_CHECKED]) / np.linalg.norm(a[:_CHECKED])
        if error > 1e-3:
            raise RuntimeError(f"{f.up.node.name}: activations are not GELU(x W1 + b1) ({error})")
        pairs.append((x, a))
    return pairs


def select(method: str, a: np.ndarray, k: int) -> np.ndarray:
    """Indices (sorted) of the ``k`` neurons ``method`` keeps, from activations ``a``."""
    if method == "topact":
        order = np.argsort(-np.abs(a).mean(axis=0), kind="stable")
    elif method == "id":
        centred = a - a.mean(axis=0)
        gram = centred.T @ centred
        gram[np.diag_indices_from(gram)] += 1e-10 * np.trace(gram) / len(gram)
        factor = scipy.linalg.cholesky(gram, lower=False)
        _, order = scipy.linalg.qr(factor, pivoting=True, mode="r")
    else:
        raise ValueError(method)
    return np.sort(order[:k])


def refit(a_kept: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``(W, b)`` with ``a_kept W + b ~ target``: the normal equations of
    the centred problem (Cholesky, float64, a 1e-10 relative jitter on the diagonal for
    round-off only), or an SVD least squares where the Gram matrix is not positive."""
    mean_a, mean_y = a_kept.mean(axis=0), target.mean(axis=0)
    a_c, y_c = a_kept - mean_a, target - mean_y
    gram = a_c.T @ a_c
    gram[np.diag_indices_from(gram)] += 1e-10 * np.trace(gram) / len(gram)
    try:
        w = scipy.linalg.solve(gram, a_c.T @ y_c, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        w = np.linalg.lstsq(a_c, y_c, rcond=None)[0]
    return w, mean_y - mean_a @ w


def baseline(model: onnx.ModelProto, method: str, share: float, feeds) -> dict:
    """Compress ``model`` in place with ``method`` at ``share``; the per-block fit errors."""
    blocks = ffns(model)
    if len(blocks) != BLOCKS or any(f.hidden != INNER for f in blocks):
        raise RuntimeError(f"expected {BLOCKS} FFNs of width {INNER}, found {len(blocks)}")
    k = round(share * INNER)
    data = gather(model, blocks, feeds)
    log(f"  {method}: {len(data[0][1])} real-token rows, keeping {k} of {INNER} per block")
    errors, new = [], []
    for f, (_, a) in zip(blocks, data, strict=True):
        w1, b1, w2, b2 = weights(model, f)
        target = a @ w2 + b2
        kept = select(method, a, k)
        w, b = refit(a[:, kept], target)
        fit = a[:, kept] @ w + b
        errors.append(float(np.linalg.norm(fit - target) / np.linalg.norm(target - target.mean(0))))
        new.append((f, w1[:, kept], b1[kept], w, b))
    for f, *values in new:
        set_ffn(model, f, *values)
    return {"widths": [k] * len(blocks), "fit_errors": errors}
