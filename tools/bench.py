"""Benchmark: the paper's eight tasks, every method, Pareto plots, and speed.

    python tools/bench.py --data ../shared/data --out tools/results [--quick]

Protocol (../shared/BENCHMARKS.md):

1. Tasks: four simulated dynamical systems and four UCI sets (``benchdata.py``); a
   missing data file is reported and the other tasks still run.
2. Reference networks per task: 2 x 64 and 3 x 128, tanh and relu, trained with
   scikit-learn's MLPRegressor (Adam, early stopping on a validation split; at most
   ``MAX_TRAIN_ROWS`` training rows, to fit the time budget). Tanh networks are exported
   with skl2onnx (MatMul + Add), relu networks with the PyTorch TorchScript exporter
   (Gemm, transB=1) when PyTorch is installed, else as the same Gemm graph built with
   onnx.helper. Cached in ``tools/cache`` so a second run does not retrain.
3. Methods, each swept over its knob and always measured through the compressed ONNX file
   in onnxruntime: ``lump`` data-free, ``lump+refit`` (compensation, calibration = training
   inputs), ``lump+refit+data`` (data similarity), ``exact``, ``magnitude``, ``wanda``,
   ``ec``, ``linear``, and ``scratch`` (the architecture retrained at smaller widths).
4. Metrics: GRP% = 100 x dense parameters after / before (non-zero weights + biases for
   the unstructured methods, whose graph does not shrink); test RMSE on standardised
   targets; dRMSE% against the uncompressed network. The test split is touched once per
   sweep point; calibration never sees it.
5. Speed: compression time of a 4 x 4096 model against onnx.load + onnx.save, and
   onnxruntime latency (one intra-op thread) of original vs compressed models.

Writes ``points.csv``/``points.json`` (every sweep point), ``<task>.md`` and ``<task>.png``
per task, ``references.md``, ``speed.md`` and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from benchdata import TASKS, Dataset, load_task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_lump import compress  # noqa: E402
from onnx_lump.equivalence import PartitionOptions, Similarity  # noqa: E402
from onnx_lump.methods import (  # noqa: E402
    EliminationCompensation,
    Exact,
    LinearFolding,
    Lump,
    Magnitude,
    Method,
    Wanda,
)
from onnx_lump.methods.lumping import DEFAULT_SIMILARITY_WITH_DATA  # noqa: E402

MAX_TRAIN_ROWS = 20000
CALIBRATION_ROWS = 2048
ARCHITECTURES = ((64, 64), (128, 128, 128))
ACTIVATIONS = ("tanh", "relu")
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TAUS = (1.0, 0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.5)
EPS_FRACTIONS = (
    0.0,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.7,
    0.8,
    1.0,
)
SCRATCH_FRACTIONS = (0.5, 0.25, 0.125)
UNSTRUCTURED = ("magnitude", "wanda", "ec")
BASELINES = ("magnitude", "wanda", "ec", "linear")
METHOD_ORDER = (
    "lump",
    "lump+refit",
    "lump+refit+data",
    "lump+refit+affine",
    "exact",
    "magnitude",
    "wanda",
    "ec",
    "linear",
    "scratch",
)


@dataclass(frozen=True)
class Point:
    task: str
    network: str
    method: str
    knob: float
    grp: float
    test_rmse: float
    drmse: float
    structured: bool
    seconds: float


@dataclass(frozen=True)
class Reference:
    task: str
    network: str
    path: Path
    test_rmse: float
    r2: float
    rmse_units: float  # in the target's original units
    params: int
    iterations: int


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- reference networks -----------------------------------------------------------------
def network_name(hidden: tuple[int, ...], activation: str) -> str:
    return f"{len(hidden)}x{hidden[0]} {activation}"


def train(
    data: Dataset, hidden: tuple[int, ...], activation: str, seed: int = 0, max_iter: int = 500
):
    from sklearn.neural_network import MLPRegressor

    rows = min(len(data.x_train), MAX_TRAIN_ROWS)
    pick = np.random.default_rng(seed).permutation(len(data.x_train))[:rows]
    model = MLPRegressor(
        hidden_layer_sizes=hidden,
        activation=activation,
        batch_size=256,
        max_iter=max_iter,
        early_stopping=True,
        n_iter_no_change=25,
        tol=1e-6,
        learning_rate_init=1e-3,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at max_iter
        y = data.y_train[pick]
        model.fit(data.x_train[pick], y.ravel() if y.shape[1] == 1 else y)
    return model


def export(model, n_inputs: int, activation: str, path: Path) -> None:
    """skl2onnx for tanh (MatMul + Add); the TorchScript exporter for relu (Gemm)."""
    if activation == "tanh":
        from skl2onnx import to_onnx

        onnx_model = to_onnx(model, np.zeros((1, n_inputs), np.float32), target_opset=17)
        onnx.save(onnx_model, path)
        return
    layers = [
        (np.asarray(c, np.float32).T, np.asarray(b, np.float32))
        for c, b in zip(model.coefs_, model.intercepts_, strict=True)
    ]
    try:
        import torch
    except ImportError:
        onnx.save(_gemm_graph(layers), path)
        return
    modules = []
    for index, (weight, bias) in enumerate(layers):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if index < len(layers) - 1:
            modules.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*modules).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, n_inputs),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
        )


def _gemm_graph(layers) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "input"
    for index, (weight, bias) in enumerate(layers):
        inits += [
            numpy_helper.from_array(weight, f"{2 * index}.weight"),
            numpy_helper.from_array(bias, f"{2 * index}.bias"),
        ]
        out = "output" if index == len(layers) - 1 else f"/{2 * index}/Gemm_output_0"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"{2 * index}.weight", f"{2 * index}.bias"], [out], transB=1
            )
        )
        current = out
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"/{2 * index + 1}/Relu_output_0"]))
            current = f"/{2 * index + 1}/Relu_output_0"
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", layers[0][0].shape[1]]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["batch", layers[-1][0].shape[0]]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x.astype(np.float32)})[0]
    return np.asarray(out, np.float64).reshape(len(x), -1)


def rmse(model: onnx.ModelProto, data: Dataset) -> float:
    return float(np.sqrt(np.mean((predict(model, data.x_test) - data.y_test) ** 2)))


def reference(
    task: str, data: Dataset, hidden, activation: str, cache: Path, quick: bool
) -> Reference:
    key = hashlib.sha1(f"{task}{hidden}{activation}{MAX_TRAIN_ROWS}{quick}v2".encode()).hexdigest()[
        :10
    ]
    path = cache / f"{task}_{len(hidden)}x{hidden[0]}_{activation}_{key}.onnx"
    meta = path.with_suffix(".json")
    if not path.exists():
        started = time.perf_counter()
        model = train(data, hidden, activation, max_iter=60 if quick else 500)
        export(model, data.x_train.shape[1], activation, path)
        meta.write_text(json.dumps({"iterations": int(model.n_iter_)}))
        took = time.perf_counter() - started
        log(f"  trained {task} {network_name(hidden, activation)} in {took:.0f} s")
    onnx_model = onnx.load(path)
    test_rmse = rmse(onnx_model, data)
    r2 = 1.0 - test_rmse**2 / float(np.mean((data.y_test - data.y_test.mean(axis=0)) ** 2))
    params = sum(
        int(np.prod(t.dims))
        for t in onnx_model.graph.initializer
        if len(t.dims) >= 1 and t.data_type == 1
    )
    units = test_rmse * float(np.sqrt(np.mean(data.y_std**2)))
    return Reference(
        task,
        network_name(hidden, activation),
        path,
        test_rmse,
        r2,
        units,
        params,
        json.loads(meta.read_text())["iterations"],
    )


# -- sweeps -------------------------------------------------------------------------------
def sweep_method(
    ref: Reference, data: Dataset, label: str, make: Callable[[float], Method], knobs, calibration
) -> list[Point]:
    model = onnx.load(ref.path)
    points = []
    for knob in knobs:
        method = make(knob)
        started = time.perf_counter()
        reduced, report = compress(model, method, calibration=calibration, verify=False)
        seconds = time.perf_counter() - started
        points.append(measure(ref, data, label, float(knob), reduced, report, seconds))
    return points


def measure(
    ref: Reference, data: Dataset, label: str, knob: float, reduced, report, seconds
) -> Point:
    """The sweep point of a compressed model: its size, and its error on the test split."""
    test = rmse(reduced, data)
    return Point(
        ref.task,
        ref.network,
        label,
        knob,
        100 * report.retained,
        test,
        100 * (test - ref.test_rmse) / ref.test_rmse,
        report.structured,
        seconds,
    )


def full_merge_eps(model: onnx.ModelProto, make: Callable[[float], Method], calibration) -> float:
    """The smallest power-of-two epsilon at which (almost) everything merges."""
    eps = 0.125
    for _ in range(16):
        _, report = compress(model, make(eps), calibration=calibration, verify=False)
        if report.retained <= 0.05:
            return eps
        eps *= 2
    return eps


def lump_sweep(ref, data, label, make, calibration, budget: int) -> list[Point]:
    """Epsilons that spread the retained share evenly: a coarse grid up to the full
    merge, then midpoints wherever two neighbours differ by more than 8 points of GRP%,
    within ``budget`` compressions. The test split is used once per kept point."""
    model = onnx.load(ref.path)
    top = full_merge_eps(model, make, calibration)
    results: dict[float, tuple] = {}

    def run(eps: float) -> None:
        method = make(eps)
        started = time.perf_counter()
        reduced, report = compress(model, method, calibration=calibration, verify=False)
        results[eps] = (reduced, report, time.perf_counter() - started)

    for fraction in (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0):
        run(top * fraction)
    while len(results) < budget:
        ordered = sorted(results)
        gaps = [
            (results[a][1].retained - results[b][1].retained, a, b)
            for a, b in itertools.pairwise(ordered)
        ]
        width, a, b = max(gaps)
        if width <= 0.08:
            break
        run(0.5 * (a + b))
    points = []
    for eps in sorted(results):
        reduced, report, seconds = results[eps]
        points.append(measure(ref, data, label, eps, reduced, report, seconds))
    return points


def scratch_points(
    ref: Reference, data: Dataset, hidden, activation, cache: Path, fractions, quick
) -> list[Point]:
    points = []
    for fraction in fractions:
        width = max(2, round(hidden[0] * fraction))
        small = tuple([width] * len(hidden))
        key = hashlib.sha1(
            f"{ref.task}{small}{activation}{MAX_TRAIN_ROWS}{quick}v2".encode()
        ).hexdigest()[:10]
        path = cache / f"{ref.task}_scratch_{len(small)}x{width}_{activation}_{key}.onnx"
        if not path.exists():
            model = train(data, small, activation, max_iter=60 if quick else 500)
            export(
                model, data.x_train.shape[1], "tanh", path
            )  # the graph style does not matter here
        onnx_model = onnx.load(path)
        params = sum(
            int(np.prod(t.dims))
            for t in onnx_model.graph.initializer
            if t.data_type == 1 and len(t.dims) >= 1
        )
        test = rmse(onnx_model, data)
        points.append(
            Point(
                ref.task,
                ref.network,
                "scratch",
                float(width),
                100 * params / ref.params,
                test,
                100 * (test - ref.test_rmse) / ref.test_rmse,
                True,
                0.0,
            )
        )
    return points


def run_network(task, data, hidden, activation, cache, quick) -> tuple[Reference, list[Point]]:
    ref = reference(task, data, hidden, activation, cache, quick)
    rng = np.random.default_rng(1)
    rows = rng.choice(len(data.x_train), min(CALIBRATION_ROWS, len(data.x_train)), replace=False)
    model = onnx.load(ref.path)
    calibration = {model.graph.input[0].name: data.x_train[rows].astype(np.float32)}
    budget = 12 if quick else 24
    sparsities = SPARSITIES[::2] if quick else SPARSITIES
    taus = TAUS[::2] if quick else TAUS

    def lump(refit: bool, similarity: Similarity = Similarity.WEIGHTS):
        return lambda eps: Lump(PartitionOptions(eps, similarity=similarity), refit=refit)

    points = [Point(task, ref.network, "original", 0.0, 100.0, ref.test_rmse, 0.0, True, 0.0)]
    points += lump_sweep(ref, data, "lump", lump(False), None, budget)
    points += lump_sweep(ref, data, "lump+refit", lump(True), calibration, budget)
    # The quick run keeps the variant lumping uses by default with data, the full run all.
    others = (Similarity.DATA, Similarity.AFFINE)
    if quick:
        others = tuple(s for s in others if s is DEFAULT_SIMILARITY_WITH_DATA)
    for similarity in others:
        label = f"lump+refit+{similarity.value}"
        points += lump_sweep(ref, data, label, lump(True, similarity), calibration, budget)
    points += sweep_method(ref, data, "exact", lambda _: Exact(), [0.0], None)
    points += sweep_method(ref, data, "magnitude", Magnitude, sparsities, None)
    points += sweep_method(ref, data, "wanda", Wanda, sparsities, calibration)
    points += sweep_method(ref, data, "ec", EliminationCompensation, sparsities, calibration)
    points += sweep_method(ref, data, "linear", LinearFolding, taus, calibration)
    scratch = SCRATCH_FRACTIONS[:2] if quick else SCRATCH_FRACTIONS
    points += scratch_points(ref, data, hidden, activation, cache, scratch, quick)
    return ref, points


# -- tables and plots ---------------------------------------------------------------------
def best_grp(points: list[Point], limit: float) -> float | None:
    within = [p.grp for p in points if p.drmse <= limit]
    return min(within) if within else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def task_table(task: str, points: list[Point], networks: list[str]) -> str:
    header = "| method | " + " | ".join(f"{n} <=1% | {n} <=5%" for n in networks) + " |"
    lines = [
        f"### {task}: smallest retained parameters (GRP%) with dRMSE <= 1% and <= 5%",
        "",
        header,
        "|---|" + "---|" * (2 * len(networks)),
    ]
    for method in METHOD_ORDER:
        cells = []
        for network in networks:
            sel = [p for p in points if p.method == method and p.network == network]
            cells += [fmt(best_grp(sel, 1.0)), fmt(best_grp(sel, 5.0))]
        if any(c != "-" for c in cells) or any(p.method == method for p in points):
            mark = " (unstructured: graph not smaller)" if method in UNSTRUCTURED else ""
            lines.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_task(task: str, points: list[Point], networks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(networks), figsize=(4.2 * len(networks), 3.8), squeeze=False)
    for ax, network in zip(axes[0], networks, strict=True):
        base = next(p.test_rmse for p in points if p.network == network and p.method == "original")
        for method in METHOD_ORDER:
            sel = sorted(
                (p for p in points if p.network == network and p.method == method),
                key=lambda p: p.grp,
            )
            if sel:
                style = "--" if method in UNSTRUCTURED else "-"
                ax.plot(
                    [p.grp for p in sel],
                    [p.test_rmse for p in sel],
                    style,
                    marker=".",
                    label=method,
                )
        ax.axhline(base * 1.05, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, base * 3)
        ax.set_xlim(0, 102)
        ax.set_title(f"{task}, {network}")
        ax.set_xlabel("retained parameters (%)")
        ax.set_ylabel("test RMSE (standardised)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def headline_method() -> str:
    """The bench label of lumping as it runs by default when calibration data is given."""
    return (
        "lump+refit"
        if DEFAULT_SIMILARITY_WITH_DATA is Similarity.WEIGHTS
        else (f"lump+refit+{DEFAULT_SIMILARITY_WITH_DATA.value}")
    )


def summary(points: list[Point], tasks: list[str]) -> tuple[str, dict]:
    """Per task and network: default lumping with compensation against the best baseline
    (magnitude, Wanda, EC, linear) and against scratch; then the lumping variants' means."""
    mine_label = headline_method()
    rows, ratios, lump5, checks = [], [], [], []
    for task in tasks:
        for network in sorted({p.network for p in points if p.task == task}):
            sel = [p for p in points if p.task == task and p.network == network]
            line = [task, network]
            for limit in (1.0, 5.0):
                mine = best_grp([p for p in sel if p.method == mine_label], limit)
                base = [best_grp([p for p in sel if p.method == m], limit) for m in BASELINES]
                base = [b for b in base if b is not None and b < 100.0]
                best = min(base) if base else None
                scratch = best_grp([p for p in sel if p.method == "scratch"], limit)
                ok = None if best is None else (mine is not None and mine <= 0.5 * best)
                checks.append(ok)
                line += [
                    fmt(mine),
                    fmt(best),
                    fmt(scratch),
                    {None: "n/a", True: "yes", False: "no"}[ok],
                ]
                if limit == 5.0:
                    lump5.append(mine if mine is not None else 100.0)
                    if mine is not None and scratch is not None:
                        ratios.append(mine / scratch)
            rows.append("| " + " | ".join(line) + " |")
    columns = [mine_label, "best baseline", "scratch", "half of baseline?"]
    header = (
        "| task | network | "
        + " | ".join(f"{c} {limit}" for limit in ("<=1%", "<=5%") for c in columns)
        + " |\n|"
        + "---|" * (2 + 2 * len(columns))
    )
    variants = ["| method | mean GRP% at dRMSE <= 1% | mean GRP% at dRMSE <= 5% |", "|---|---|---|"]
    for method in METHOD_ORDER:
        if not any(p.method == method for p in points):
            continue
        means = []
        for limit in (1.0, 5.0):
            values = []
            for task in tasks:
                for network in {p.network for p in points if p.task == task}:
                    sel = [
                        p
                        for p in points
                        if p.task == task and p.network == network and p.method == method
                    ]
                    if sel:
                        found = best_grp(sel, limit)
                        values.append(100.0 if found is None else found)
            means.append(f"{np.mean(values):.1f}" if values else "-")
        variants.append(f"| {method} | {means[0]} | {means[1]} |")
    stats = {
        "headline method": mine_label,
        "mean GRP% at dRMSE <= 5% (no point counts as 100)": f"{np.mean(lump5):.1f}"
        if lump5
        else "-",
        "mean ratio to scratch at dRMSE <= 5% (where both exist)": f"{np.mean(ratios):.2f}"
        if ratios
        else "-",
        "at most half of the best baseline": f"{sum(c is True for c in checks)} of "
        f"{sum(c is not None for c in checks)} comparisons",
    }
    text = (
        header
        + "\n"
        + "\n".join(rows)
        + "\n\n"
        + "Means over all task x network pairs (a method with no point within the limit "
        + "counts as 100):\n\n"
        + "\n".join(variants)
        + "\n"
    )
    return text, stats


# -- speed --------------------------------------------------------------------------------
def latency(model: onnx.ModelProto, batch: int, n_inputs: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, n_inputs)).astype(np.float32)
    session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def speed(
    out: Path, quick: bool, lumped_examples: list[tuple[str, onnx.ModelProto, onnx.ModelProto]]
) -> str:
    from time_wide import build

    width = 1024 if quick else 4096
    lines = [f"## Speed\n\n### Compression time, {4} hidden Tanh layers of {width}\n"]
    io_times, lump_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.onnx"
        onnx.save(build(width), path)
        for _ in range(3):  # medians: one run on a shared machine is noise
            started = time.perf_counter()
            model = onnx.load(path)
            onnx.save(model, Path(tmp) / "copy.onnx")
            io_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            small, report = compress(model, Lump(PartitionOptions(0.05)), verify=False)
            lump_times.append(time.perf_counter() - started)
    io_seconds, seconds = float(np.median(io_times)), float(np.median(lump_times))
    lines.append(
        f"onnx.load + onnx.save: {io_seconds:.2f} s; lump (eps 0.05, "
        f"{100 * report.retained:.1f}% kept, no verification): {seconds:.2f} s "
        f"(medians of 3); ratio **{seconds / io_seconds:.2f}x** (target <= 2x)\n"
    )
    lines.append("### onnxruntime latency, one intra-op thread (median of repeated runs)\n")
    lines.append(
        "| model | params kept | batch 1 ratio | batch 1024 ratio "
        "| batch 1024 ratio / params ratio |"
    )
    lines.append("|---|---|---|---|---|")
    examples = [(f"wide 4 x {width}, lump eps 0.05", model, small), *lumped_examples]
    for label, original, reduced in examples:
        n_inputs = original.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        p0 = sum(int(np.prod(t.dims)) for t in original.graph.initializer if t.data_type == 1)
        p1 = sum(
            int(np.count_nonzero(onnx.numpy_helper.to_array(t)))
            for t in reduced.graph.initializer
            if t.data_type == 1
        )
        repeats = 20 if "wide" in label else 200
        r1 = latency(reduced, 1, n_inputs, repeats) / latency(original, 1, n_inputs, repeats)
        r1024 = latency(reduced, 1024, n_inputs, max(5, repeats // 10)) / latency(
            original, 1024, n_inputs, max(5, repeats // 10)
        )
        lines.append(
            f"| {label} | {100 * p1 / p0:.1f}% | {r1:.2f} | {r1024:.2f} | {r1024 / (p1 / p0):.2f} |"
        )
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results")
    parser.add_argument("--cache", type=Path, default=ROOT / "tools" / "cache")
    parser.add_argument("--quick", action="store_true", help="one small network on two tasks")
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="rerun only the speed measurements (cached networks, OUT/points.json)",
    )
    parser.add_argument(
        "--from-points",
        action="store_true",
        help="rebuild tables, plots and summary from OUT/points.json without rerunning",
    )
    args = parser.parse_args()
    if args.from_points:
        rebuild(args.out)
        return
    if args.speed_only:
        rerun_speed(args)
        return
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    tasks = ("rn", "abalone") if args.quick else TASKS
    architectures = ARCHITECTURES[:1] if args.quick else ARCHITECTURES
    activations = ("tanh",) if args.quick else ACTIVATIONS

    points: list[Point] = []
    references: list[Reference] = []
    done_tasks, examples = [], []
    for task in tasks:
        try:
            data = load_task(task, args.data)
        except FileNotFoundError as exc:
            log(f"SKIPPED {task}: {exc}")
            continue
        log(f"{task}: {data.x_train.shape[0]} train / {data.x_test.shape[0]} test rows")
        task_points = []
        for hidden in architectures:
            for activation in activations:
                ref, net_points = run_network(
                    task, data, hidden, activation, args.cache, args.quick
                )
                references.append(ref)
                task_points += net_points
                best = best_grp([p for p in net_points if p.method == headline_method()], 5.0)
                log(
                    f"  {ref.network}: test RMSE {ref.test_rmse:.4f}, "
                    f"{headline_method()} keeps {fmt(best)}% at dRMSE <= 5%"
                )
                if hidden == architectures[-1] and len(examples) < 3:
                    examples.append(_latency_example(ref, data, net_points))
        networks = sorted({p.network for p in task_points})
        (args.out / f"{task}.md").write_text(task_table(task, task_points, networks))
        plot_task(task, task_points, networks, args.out / f"{task}.png")
        points += task_points
        done_tasks.append(task)

    write_points(points, args.out)
    (args.out / "references.md").write_text(reference_table(references))
    speed_text = speed(args.out, args.quick, [e for e in examples if e is not None])
    (args.out / "speed.md").write_text(speed_text)
    elapsed = time.perf_counter() - started
    run = f"{'quick' if args.quick else 'full'} run, {elapsed / 60:.1f} min"
    (args.out / "run.txt").write_text(run + "\n")
    stats = write_summary(points, done_tasks, args.out)
    log(f"done in {elapsed / 60:.1f} min: {json.dumps(stats)}")


def write_summary(points: list[Point], tasks: list[str], out: Path) -> dict:
    table, stats = summary(points, tasks)
    run = (out / "run.txt").read_text().strip() if (out / "run.txt").exists() else "run"
    speed_text = (out / "speed.md").read_text() if (out / "speed.md").exists() else ""
    (out / "summary.md").write_text(
        f"# Benchmark summary ({run})\n\n"
        + table
        + "\n"
        + "\n".join(f"- {k}: {v}" for k, v in stats.items())
        + "\n\n"
        + speed_text
    )
    return stats


def rerun_speed(args) -> None:
    """The speed section again, on the networks of the full run's latency examples."""
    points = [Point(**row) for row in json.loads((args.out / "points.json").read_text())]
    examples = []
    for task in TASKS:
        if len(examples) == 3 or not any(p.task == task for p in points):
            continue
        data = load_task(task, args.data)
        for activation in ACTIVATIONS:
            if len(examples) < 3:
                hidden = ARCHITECTURES[-1]
                ref = reference(task, data, hidden, activation, args.cache, quick=False)
                net_points = [p for p in points if p.task == task and p.network == ref.network]
                examples.append(_latency_example(ref, data, net_points))
    (args.out / "speed.md").write_text(speed(args.out, False, [e for e in examples if e]))
    tasks = [t for t in TASKS if any(p.task == t for p in points)]
    log(json.dumps(write_summary(points, tasks, args.out)))


def rebuild(out: Path) -> None:
    points = [Point(**row) for row in json.loads((out / "points.json").read_text())]
    tasks = [t for t in TASKS if any(p.task == t for p in points)]
    for task in tasks:
        task_points = [p for p in points if p.task == task]
        networks = sorted({p.network for p in task_points})
        (out / f"{task}.md").write_text(task_table(task, task_points, networks))
        plot_task(task, task_points, networks, out / f"{task}.png")
    log(json.dumps(write_summary(points, tasks, out)))


def _latency_example(ref: Reference, data: Dataset, points: list[Point]):
    chosen = [p for p in points if p.method == headline_method() and p.drmse <= 5.0]
    if not chosen:
        return None
    point = min(chosen, key=lambda p: p.grp)
    model = onnx.load(ref.path)
    rows = np.random.default_rng(1).choice(
        len(data.x_train), min(CALIBRATION_ROWS, len(data.x_train)), replace=False
    )
    calibration = {model.graph.input[0].name: data.x_train[rows].astype(np.float32)}
    options = PartitionOptions(point.knob, similarity=DEFAULT_SIMILARITY_WITH_DATA)
    reduced, _ = compress(model, Lump(options), calibration=calibration, verify=False)
    label = f"{ref.task} {ref.network}, {headline_method()} at dRMSE {point.drmse:.1f}%"
    return label, model, reduced


def write_points(points: list[Point], out: Path) -> None:
    rows = [asdict(p) for p in points]
    (out / "points.json").write_text(json.dumps(rows, indent=0) + "\n")
    with (out / "points.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


TYPICAL = {
    "abalone": "RMSE about 2.1 rings, R^2 0.55-0.60",
    "protein": "RMSE 3.6-4.0, R^2 0.57-0.65",
    "metro": "R^2 about 0.94 with time features",
    "hepc": "(no typical value given)",
}


def reference_table(references: list[Reference]) -> str:
    lines = [
        "| task | network | iterations | test RMSE (standardised) | RMSE (target units) | R^2 "
        "| typical (data README) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in references:
        lines.append(
            f"| {r.task} | {r.network} | {r.iterations} | {r.test_rmse:.4f} | {r.rmse_units:.4g} "
            f"| {r.r2:.3f} | {TYPICAL.get(r.task, 'simulated: no reference')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
