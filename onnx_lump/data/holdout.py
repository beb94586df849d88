"""Calibration inputs split into a fitting share and a held-out share, and the error
measured on the held-out share.

Every fit the pass makes from data (refit, refine, constant-neuron detection, data
similarity) sees only ``fit``; every error it prints, searches on or judges a tolerance
by is measured on ``holdout``, which it never fitted. ``holdout`` is a seeded random
share of the calibration rows, or the user's own validation inputs (``--val``).

The held-out rows also *choose*: refinement returns the weights with the lowest error on
them, and a search the smallest network within the budget on them, so their error is
biased low, more so the fewer they are (a 1,024-row set printed 3.6% for a network whose
error on the calibration set's other rows was 19.7%). :func:`carve_audit` therefore sets
aside half of the held-out share as audit rows that nothing fits or chooses on; the CLI
prints the error measured there.

A model with several outputs is measured output by output (:func:`output_error`): each
float output on its own scale, the worst reported and searched on; an integer, boolean or
text output is a label, reported as the share of rows whose label changed; skl2onnx's
ZipMap (a sequence of maps) is read as probabilities by sorted key.

A float output's error is one of two measures (``metric``, the CLI's ``--metric``):
``rmse`` (the default), the RMSE of the output change relative to the spread of the
original's outputs; or ``cosine``, the mean over output rows of 1 - cos(original row,
reduced row), a row being the output's last axis (an embedding vector; for a
[batch, sequence, hidden] output, each position). Where the rows were read with a padding
mask (:func:`onnx_lump.data.calibration.token_mask`, the ``attention_mask`` input by
default) and the output is laid out by position like it, the padding positions do not
count. A zero row against a zero row is at distance 0, a zero row against another at 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np
import onnx

from onnx_lump.data.calibration import AUTO_MASK_INPUT, token_mask
from onnx_lump.errors import LumpError
from onnx_lump.runtime import run_model
from onnx_lump.types import COSINE, METRICS, RMSE

__all__ = [
    "DEFAULT_HOLDOUT",
    "MIN_HOLDOUT_ROWS",
    "AuditSplit",
    "CalibrationSplit",
    "HeldOutError",
    "OutputColumns",
    "OutputScore",
    "StackedOutputs",
    "carve_audit",
    "check_metric",
    "cosine_distance",
    "error_rows",
    "holdout_error",
    "output_error",
    "output_errors",
    "split_calibration",
    "stack_outputs",
    "stacked_outputs",
]

DEFAULT_HOLDOUT = 0.2
# Fewer held-out rows than this give an error estimate too noisy to search on.
MIN_HOLDOUT_ROWS = 8


@dataclass(frozen=True, eq=False)
class CalibrationSplit:
    """Feeds to fit on and feeds to measure on (rows on axis 0 of every input);
    ``targets`` are reference outputs for the held-out rows when the user gave them."""

    fit: dict[str, np.ndarray]
    holdout: dict[str, np.ndarray]
    description: str
    targets: np.ndarray | None = None

    @property
    def n_fit(self) -> int:
        return _rows(self.fit)

    @property
    def n_holdout(self) -> int:
        return _rows(self.holdout)


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def split_calibration(
    calibration: Mapping[str, np.ndarray],
    share: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    validation: Mapping[str, np.ndarray] | None = None,
    targets: np.ndarray | None = None,
) -> CalibrationSplit:
    """Hold out ``share`` of the calibration rows (seeded), or measure on ``validation``
    (then every calibration row is fitted on) with optional ``targets``."""
    rows = _rows(calibration)
    if any(np.asarray(v).shape[:1] != (rows,) for v in calibration.values()):
        raise LumpError("every calibration input must have the same number of rows (axis 0)")
    if validation is not None:
        n_val = _rows(validation)
        if n_val == 0:
            raise LumpError("the validation inputs (--val) hold no rows")
        if targets is not None and np.asarray(targets).shape[:1] != (n_val,):
            raise LumpError(
                f"the validation targets have {np.asarray(targets).shape[0]} rows, "
                f"the validation inputs {n_val}"
            )
        return CalibrationSplit(
            dict(calibration), dict(validation), f"{n_val} rows of --val", targets
        )
    if not 0.0 < share < 1.0:
        raise LumpError(f"the held-out share must be in (0, 1), got {share}")
    n_holdout = round(share * rows)
    if n_holdout < MIN_HOLDOUT_ROWS or rows - n_holdout < MIN_HOLDOUT_ROWS:
        raise LumpError(
            f"{rows} calibration rows are too few to hold out {100 * share:g}% and still fit: "
            f"need at least {MIN_HOLDOUT_ROWS} rows on each side (give more rows or --val)"
        )
    order = np.random.default_rng(seed).permutation(rows)
    held, kept = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    return CalibrationSplit(
        {k: np.asarray(v)[kept] for k, v in calibration.items()},
        {k: np.asarray(v)[held] for k, v in calibration.items()},
        f"{n_holdout} held-out calibration rows ({100 * share:g}%, seed {seed}), "
        f"fitted on the other {rows - n_holdout}",
    )


FLOAT = "float"
LABEL = "label"
LEFT_OUT = "left out"
ZIPMAP_NOTE = "sequence of maps (ZipMap): probabilities by sorted key"


def check_metric(metric: str) -> str:
    """``metric`` if it is one of ``METRICS``; else a LumpError that names them."""
    if metric not in METRICS:
        raise LumpError(f"unknown error metric '{metric}': choose {' or '.join(METRICS)}")
    return metric


@dataclass(frozen=True)
class OutputColumns:
    """Which columns of stacked outputs hold one model output, and its kind: ``float``
    (measured on its own scale), ``label`` (compared row by row) or ``left out``
    (no columns; ``note`` says why). ``shape`` is one row's shape (the output's shape
    past axis 0), whose last axis the cosine metric compares."""

    name: str
    kind: str
    start: int
    stop: int
    note: str = ""
    shape: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.stop - self.start


class StackedOutputs(np.ndarray):
    """A (rows x values) float64 array of every model output, with the ``layout`` of its
    columns and the padding ``mask`` of the rows' inputs (rows x positions, or None)
    (:func:`stack_outputs`); it is an ordinary array everywhere else."""

    layout: tuple[OutputColumns, ...] | None = None
    mask: np.ndarray | None = None

    def __array_finalize__(self, obj) -> None:
        self.layout = getattr(obj, "layout", None)
        self.mask = getattr(obj, "mask", None)


@dataclass(frozen=True)
class OutputScore:
    """One output's share of the error: a float output's relative error (or dRMSE against
    targets), or a label output's share of rows whose label changed (``changed`` of
    ``rows``); ``error`` is None for an output left out."""

    name: str
    kind: str
    error: float | None
    note: str = ""
    changed: int | None = None
    rows: int | None = None


class HeldOutError(float):
    """The error :func:`output_error` reports (the worst float output's; the worst label
    change share when the model has no float output), with each output's score beside it
    and the ``metric`` of the float outputs. It is a float everywhere (arithmetic on it
    gives plain floats)."""

    outputs: tuple[OutputScore, ...]
    worst: str
    metric: str

    def __new__(
        cls,
        value: float,
        outputs: Sequence[OutputScore] = (),
        worst: str = "",
        metric: str = RMSE,
    ):
        self = super().__new__(cls, value)
        self.outputs, self.worst, self.metric = tuple(outputs), worst, metric
        return self

    def __reduce__(self):
        return (HeldOutError, (float(self), self.outputs, self.worst, self.metric))

    @property
    def label_changed(self) -> float | None:
        """The largest share of rows whose label changed, over the label outputs."""
        shares = [s.error for s in self.outputs if s.kind == LABEL and s.error is not None]
        return max(shares) if shares else None

    def to_dict(self) -> dict:
        return {
            "error": float(self),
            "metric": self.metric,
            "worst": self.worst,
            "label_changed": self.label_changed,
            "outputs": [asdict(s) for s in self.outputs],
        }


def output_error(
    reference: np.ndarray,
    output: np.ndarray,
    targets: np.ndarray | None = None,
    metric: str = RMSE,
) -> float:
    """The error the tool reports and searches on. With ``metric`` ``rmse``: with
    ``targets``, the relative increase of the RMSE against them (dRMSE); otherwise the
    RMSE of the output change relative to the standard deviation of the reference
    outputs (0 = identical, 1 = no better than their mean). With ``cosine``: the mean
    over output rows (the last axis) of 1 - cos(reference row, output row), padding
    positions left out (see the module's docstring); with ``targets``, how much that
    distance to them grew (output's minus reference's).

    Outputs stacked by :func:`stack_outputs` are measured one at a time (see
    :func:`output_errors`): each float output on its own scale, and the value is the worst
    of them; a label output counts as the share of rows whose label changed, which enters
    the value only when the model has no float output. The value returned is then a
    :class:`HeldOutError` (a float) that carries that breakdown. A plain array is one
    output, measured as a whole."""
    check_metric(metric)
    layout = _layout_of(reference, output)
    if layout is None:
        return _float_error(reference, output, targets, metric, np.shape(reference)[1:])
    return output_errors(reference, output, targets, metric)


def output_errors(
    reference: np.ndarray,
    output: np.ndarray,
    targets: np.ndarray | None = None,
    metric: str = RMSE,
) -> HeldOutError:
    """:func:`output_error` output by output (a plain array is one float output)."""
    check_metric(metric)
    reference_layout = _layout_of(reference, output)
    mask = getattr(reference, "mask", None)
    if mask is None:
        mask = getattr(output, "mask", None)
    shape = np.shape(reference)[1:]
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    output = np.asarray(output, np.float64).reshape(reference.shape)
    layout = reference_layout or (
        OutputColumns("output", FLOAT, 0, reference.shape[1], shape=tuple(shape)),
    )
    measured = [c for c in layout if c.kind != LEFT_OUT]
    floats = [c for c in layout if c.kind == FLOAT]
    split_targets = _split_targets(targets, layout, reference.shape)
    scores = []
    for columns in layout:
        if columns.kind == LEFT_OUT:
            scores.append(OutputScore(columns.name, LEFT_OUT, None, columns.note))
            continue
        whole = len(measured) == 1 and columns.width == reference.shape[1]
        ref = reference if whole else reference[:, columns.start : columns.stop]
        out = output if whole else output[:, columns.start : columns.stop]
        if columns.kind == LABEL:
            changed = int(np.count_nonzero((ref != out).any(axis=1))) if ref.size else 0
            share = changed / len(ref) if len(ref) else 0.0
            scores.append(OutputScore(columns.name, LABEL, share, columns.note, changed, len(ref)))
        else:
            error = _float_error(
                ref, out, split_targets.get(columns.name), metric, columns.shape, mask
            )
            scores.append(OutputScore(columns.name, FLOAT, error, columns.note))
    if not measured:
        raise LumpError(
            "no output of the model can be measured: "
            + "; ".join(f"'{c.name}' {c.note}" for c in layout)
        )
    graded = [s for s in scores if s.kind == (FLOAT if floats else LABEL)]
    worst = max(graded, key=lambda s: cast(float, s.error))  # measured: an error each
    # without a float output the error is a share of rows (printed as a percentage)
    return HeldOutError(
        cast(float, worst.error), tuple(scores), worst.name, metric if floats else RMSE
    )


def _float_error(reference, output, targets, metric: str = RMSE, shape=(), mask=None) -> float:
    """The one-output measure: ``rmse`` (the formula the tool has always used) or
    ``cosine`` over rows of the last axis of ``shape`` (one row's shape)."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    output = np.asarray(output, np.float64).reshape(reference.shape)
    if metric == COSINE:
        shape = tuple(shape) or (1,)
        width = shape[-1] if reference.shape[1] == int(np.prod(shape)) else reference.shape[1]
        keep = _kept_positions(mask, len(reference), shape)
        now = cosine_distance(reference, output, width, keep)
        if targets is None:
            return now
        targets = np.asarray(targets, np.float64).reshape(reference.shape)
        return cosine_distance(targets, output, width, keep) - cosine_distance(
            targets, reference, width, keep
        )
    if targets is not None:
        targets = np.asarray(targets, np.float64).reshape(reference.shape)
        base = float(np.sqrt(np.mean((reference - targets) ** 2)))
        now = float(np.sqrt(np.mean((output - targets) ** 2)))
        return (now - base) / base if base > 0 else now
    spread = float(reference.std()) or 1.0
    return float(np.sqrt(np.mean((output - reference) ** 2))) / spread


def _kept_positions(mask, rows: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The padding mask as one boolean per output row of the last axis (rows x
    positions, flattened), where the output is laid out by position like the mask;
    else None (every row counts)."""
    if mask is None or len(shape) < 2 or tuple(np.shape(mask)) != (rows, *shape[:-1]):
        return None
    return np.asarray(mask, bool).reshape(-1)


def cosine_distance(
    reference: np.ndarray, output: np.ndarray, width: int, keep: np.ndarray | None = None
) -> float:
    """The mean over rows of 1 - cos(reference row, output row), the arrays read as rows
    of ``width`` values (C order), only the rows ``keep`` marks where it is given. A zero
    row against a zero row is at distance 0, a zero row against another at 1; no rows
    at all are at 0."""
    if width <= 0 or np.size(reference) == 0:
        return 0.0
    reference = np.asarray(reference, np.float64).reshape(-1, width)
    output = np.asarray(output, np.float64).reshape(-1, width)
    if keep is not None:
        reference, output = reference[keep], output[keep]
    if len(reference) == 0:
        return 0.0
    # 1 - cos(x, y) = |x/|x| - y/|y||^2 / 2: no cancellation for close rows (identical
    # rows are at 0 exactly)
    norm_r = np.linalg.norm(reference, axis=1, keepdims=True)
    norm_o = np.linalg.norm(output, axis=1, keepdims=True)
    zero_r, zero_o = norm_r[:, 0] == 0, norm_o[:, 0] == 0
    units_r = reference / np.where(zero_r[:, None], 1.0, norm_r)
    units_o = output / np.where(zero_o[:, None], 1.0, norm_o)
    distances = np.clip(0.5 * np.sum((units_r - units_o) ** 2, axis=1), 0.0, 2.0)
    distances = np.where(zero_r | zero_o, np.where(zero_r & zero_o, 0.0, 1.0), distances)
    return float(np.mean(distances))


def _layout_of(reference, output) -> tuple[OutputColumns, ...] | None:
    """The column layout of stacked outputs (None for plain arrays, or where it cannot
    describe the columns given); the reference's, which the output's must agree with."""
    layout = getattr(reference, "layout", None) or getattr(output, "layout", None)
    if not layout:
        return None
    width = int(np.prod(np.shape(reference)[1:], dtype=np.int64))
    if np.ndim(reference) != 2 or sum(c.width for c in layout) != width:
        return None  # columns sliced or reshaped since stacking
    other = getattr(output, "layout", None)
    if other and [(c.name, c.kind) for c in other] != [(c.name, c.kind) for c in layout]:
        raise LumpError(
            "the reduced model's outputs differ from the original's: "
            + ", ".join(f"'{c.name}' ({c.kind})" for c in other)
            + " against "
            + ", ".join(f"'{c.name}' ({c.kind})" for c in layout)
        )
    return layout


def _split_targets(
    targets, layout: Sequence[OutputColumns], shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """User targets by float output: they hold one value per output value (every output
    or the float ones, in output order); a label output is always compared with the
    original's labels."""
    if targets is None:
        return {}
    targets = np.asarray(targets, np.float64)
    rows = shape[0]
    floats = [c for c in layout if c.kind == FLOAT]
    per_row = targets.size // rows if rows and targets.size % rows == 0 else -1
    if per_row == shape[1]:
        flat, spans = targets.reshape(shape), [(c, c.start, c.stop) for c in floats]
    else:
        offsets = np.cumsum([0] + [c.width for c in floats])
        if per_row != offsets[-1]:
            raise LumpError(
                f"the targets hold {targets.size} values for {rows} rows, but the model's "
                f"outputs hold {shape[1]} values per row (its float outputs "
                f"{int(offsets[-1])}: {', '.join(c.name for c in floats) or 'none'})"
            )
        flat = targets.reshape(rows, per_row)
        spans = [
            (c, int(a), int(b)) for c, a, b in zip(floats, offsets[:-1], offsets[1:], strict=True)
        ]
    return {c.name: flat[:, a:b] for c, a, b in spans}


def stacked_outputs(
    model,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence,
    mask_input: str | None = AUTO_MASK_INPUT,
) -> np.ndarray:
    """Every output of ``model`` on ``feeds`` from onnxruntime, as one (rows x values)
    float64 array (see :func:`stack_outputs`), with the padding mask of ``feeds``
    (:func:`onnx_lump.data.calibration.token_mask` of ``mask_input``)."""
    return stack_outputs(run_model(model, feeds, providers), token_mask(feeds, mask_input))


def stack_outputs(
    values: Mapping[str, np.ndarray], mask: np.ndarray | None = None
) -> StackedOutputs:
    """Outputs by name (as :func:`onnx_lump.runtime.run_model` returns them) as one
    (rows x values) float64 array whose ``layout`` says which columns are which output
    and of which kind, for :func:`output_error` to measure them one at a time.

    A float tensor is a float output; an integer, boolean or string tensor is a label
    output (strings as stable numeric codes); a sequence of maps (skl2onnx's ZipMap) is
    a float output, one column per key in sorted key order. Anything else (a sequence of
    tensors, a tensor without the rows on axis 0) is left out (zero columns) with a note.
    ``mask`` (rows x positions, :func:`onnx_lump.data.calibration.token_mask` of the
    inputs) rides along for the cosine metric, which leaves padding positions out.
    """
    rows = _row_count(values)
    blocks, layout, start = [], [], 0
    for name, value in values.items():
        kind, block, note = _columns(value, rows)
        if block is None:
            layout.append(OutputColumns(name, LEFT_OUT, start, start, note))
            continue
        blocks.append(block)
        shape = tuple(np.shape(value)[1:]) if not isinstance(value, list) else block.shape[1:]
        layout.append(OutputColumns(name, kind, start, start + block.shape[1], note, shape))
        start += block.shape[1]
    stacked = (
        np.concatenate(blocks, axis=1) if blocks else np.zeros((rows or 0, 0), np.float64)
    ).view(StackedOutputs)
    stacked.layout = tuple(layout)
    stacked.mask = None if mask is None else np.asarray(mask, bool)
    return stacked


def _row_count(values: Mapping[str, np.ndarray | list]) -> int | None:
    """The rows of the first output that has a leading axis."""
    for value in values.values():
        if isinstance(value, list):
            return len(value)
        if np.ndim(value) >= 1:
            return len(value)
    return None


def _columns(value, rows: int | None) -> tuple[str, np.ndarray | None, str]:
    """(kind, rows x columns float64 block or None when left out, note) of one output."""
    if isinstance(value, list):
        if value and all(isinstance(row, Mapping) for row in value):
            keys = sorted(value[0])
            if any(sorted(row) != keys for row in value):
                return LEFT_OUT, None, "is a sequence of maps whose keys differ between rows"
            block = np.array([[row[k] for k in keys] for row in value], dtype=np.float64)
            return FLOAT, block.reshape(len(value), len(keys)), ZIPMAP_NOTE
        if not value:
            return FLOAT, np.zeros((0, 0), np.float64), ZIPMAP_NOTE
        return LEFT_OUT, None, "is a sequence, not a tensor"
    if isinstance(value, Mapping):
        return LEFT_OUT, None, "is a map, not a tensor"
    array = np.asarray(value)
    if array.ndim == 0 or len(array) != rows:
        return LEFT_OUT, None, f"has no axis of the {rows} rows first (shape {array.shape})"
    kind = array.dtype.kind
    if kind == "f":
        return FLOAT, array.astype(np.float64).reshape(len(array), -1), ""
    if kind in "biu":
        return LABEL, array.astype(np.float64).reshape(len(array), -1), ""
    if kind in "USO":
        try:
            codes = [_label_code(v) for v in array.reshape(-1)]
        except TypeError:
            return LEFT_OUT, None, f"holds {array.dtype} values that are neither numbers nor text"
        return LABEL, np.array(codes, np.float64).reshape(len(array), -1), "text labels"
    return LEFT_OUT, None, f"is a {array.dtype} tensor"


def _label_code(value) -> float:
    """A number that stands for one text label, the same in every run (below 2**53, so
    that float64 holds it exactly)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        raise TypeError(type(value).__name__)
    return float(int.from_bytes(hashlib.blake2b(data, digest_size=6).digest(), "little"))


@dataclass(frozen=True, eq=False)
class AuditSplit:
    """Calibration rows with an audit share set aside: ``rest`` goes to the pass, to be
    split into fitting rows and ``rest_share`` of held-out (choosing) rows; ``audit`` is
    measured only, after every choice is made."""

    rest: dict[str, np.ndarray]
    audit: dict[str, np.ndarray]
    rest_share: float
    description: str

    @property
    def n_audit(self) -> int:
        return _rows(self.audit)


def carve_audit(
    calibration: Mapping[str, np.ndarray], share: float = DEFAULT_HOLDOUT, seed: int = 0
) -> AuditSplit | None:
    """Set aside half of the held-out ``share`` of the calibration rows (seeded) as audit
    rows, so that the fitting share stays what it was and the other half of the held-out
    share still chooses; None when either half would be under ``MIN_HOLDOUT_ROWS`` rows
    (the held-out rows then both choose and report, as before)."""
    rows = _rows(calibration)
    if not 0.0 < share < 1.0 or any(
        np.asarray(v).shape[:1] != (rows,) for v in calibration.values()
    ):
        return None  # split_calibration says what is wrong
    n_audit = round(share * rows / 2)
    n_choose = round(share * rows) - n_audit
    if min(n_audit, n_choose) < MIN_HOLDOUT_ROWS or rows - n_audit - n_choose < MIN_HOLDOUT_ROWS:
        return None
    # a stream of its own: the split of the rest then draws as split_calibration always does
    order = np.random.default_rng([seed, 0xA0D17]).permutation(rows)
    audit, rest = np.sort(order[:n_audit]), np.sort(order[n_audit:])
    return AuditSplit(
        {k: np.asarray(v)[rest] for k, v in calibration.items()},
        {k: np.asarray(v)[audit] for k, v in calibration.items()},
        n_choose / (rows - n_audit),
        f"{n_audit} audit calibration rows ({100 * share / 2:g}%, seed {seed}) that no fit "
        "or choice used",
    )


def error_rows(
    calibration: Mapping[str, np.ndarray], share: float = DEFAULT_HOLDOUT, seed: int = 0
) -> dict[str, np.ndarray]:
    """The calibration rows the CLI measures (and prints) its error on: the audit rows,
    or the held-out rows where there are too few rows to set audit rows aside."""
    audit = carve_audit(calibration, share, seed)
    return audit.audit if audit is not None else split_calibration(calibration, share, seed).holdout


def holdout_error(
    original: onnx.ModelProto,
    reduced,
    split: CalibrationSplit,
    providers: Sequence,
    metric: str = RMSE,
    mask_input: str | None = AUTO_MASK_INPUT,
) -> float:
    """:func:`output_error` of ``reduced`` against ``original`` on the held-out rows,
    both run by onnxruntime (``reduced`` may be a model or the path of a written file)."""
    reference = stacked_outputs(original, split.holdout, providers, mask_input)
    output = stacked_outputs(reduced, split.holdout, providers, mask_input)
    return output_error(reference, output, split.targets, metric)
