"""One reference network through every method, with its finished sweep cached on disk so
an interrupted full run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import onnx

from onnx_lump.methods import (
    EliminationCompensation,
    Exact,
    LinearFolding,
    Magnitude,
    Wanda,
)
from onnx_lump.methods.lumping import (
    DEFAULT_SIMILARITY_WITH_DATA,
)
from onnx_lump.ode.partition import Similarity
from tools.bench.common import (
    INT8_TARGETS,
    ONNXSIM_FLOOR_SPARSITIES,
    ONNXSIM_LOW_SPARSITIES,
    ONNXSIM_SPARSITIES,
    PROTOCOL_VERSION,
    REFINE_FLOOR_TARGETS,
    REFINE_MID_TARGETS,
    REFINE_TARGETS,
    SCRATCH_FRACTIONS,
    SPARSITIES,
    TAUS,
    Point,
    Reference,
    log,
    point_from_dict,
)
from tools.bench.methods import lump_sweep, lumping, scratch_points, sweep_method
from tools.bench.metrics import HAS_REFINE, Network
from tools.bench.networks import calibration_feeds, predict, reference
from tools.bench.quantized import int8_points
from tools.bench.refined import (
    DONE_DRMSE,
    ONNXSIM_SLOW_LEARNING_RATE,
    onnxsim_points,
    refine_budget,
    refine_knobs,
    refined_points,
    same_sizes,
)
from tools.benchdata import Dataset

__all__ = ["GROUPS", "grids", "headline_method", "run_network"]


def headline_method() -> str:
    """The bench label of lumping with compensation as it runs by default with data."""
    if DEFAULT_SIMILARITY_WITH_DATA is Similarity.WEIGHTS:
        return "lump+refit"
    return f"lump+refit+{DEFAULT_SIMILARITY_WITH_DATA.value}"


def grids(quick: bool) -> dict:
    """Every sweep's knobs; the quick run takes a few of each."""
    return {
        "budget": 12 if quick else 20,
        "baseline_budget": 12,
        "sparsities": SPARSITIES[::2] if quick else SPARSITIES,
        "taus": TAUS[::2] if quick else TAUS,
        "scratch": SCRATCH_FRACTIONS[:2] if quick else SCRATCH_FRACTIONS,
        "refine_targets": (5.0, 20.0) if quick else REFINE_TARGETS,
        "onnxsim": (0.5, 0.8) if quick else ONNXSIM_SPARSITIES,
        "onnxsim_low": (0.2,) if quick else ONNXSIM_LOW_SPARSITIES,
        "onnxsim_floor": (0.9,) if quick else ONNXSIM_FLOOR_SPARSITIES,
        "onnxsim_slow": (0.5,) if quick else (0.5, 0.3, 0.2, 0.1),
        "refine_mid": (10.0,) if quick else REFINE_MID_TARGETS,
        "refine_floor": (2.0,) if quick else REFINE_FLOOR_TARGETS,
        # The data similarity lumping uses by default with calibration (its affine
        # variant was measured before and is not rerun: it cost a quarter of the sweeps).
        "variants": [DEFAULT_SIMILARITY_WITH_DATA.value],
        "int8_targets": (20.0, 60.0) if quick else INT8_TARGETS,
    }


def _refined(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """The headline lumping's sweep (unrefined: its epsilons pick the refined sizes), then
    lump+refine and distill."""
    ref, label = net.ref, headline_method()
    make = lumping(True, DEFAULT_SIMILARITY_WITH_DATA)
    size = ref.path.stat().st_size
    points = [
        Point(
            ref.task, ref.network, "original", 0.0, 100.0, ref.test_rmse, 0.0, True, 0.0, bytes=size
        )
    ]
    found, retained = lump_sweep(net, label, make, net.calibration, grid["budget"])
    points += found
    if not HAS_REFINE:
        log("  SKIPPED lump+refine and distill: this onnx_lump has no refine stage")
        return points
    knobs = refine_knobs(net, make, retained, grid["refine_targets"])
    found = refined_points(net, make, knobs, retained)
    sizes = len({p.knob for p in found})
    log(f"  {net.ref.network}: lump+refine and distill at {sizes} of {len(knobs)} sizes")
    return points + found


def _baselines(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    calibration, budget = net.calibration, grid["baseline_budget"]
    points = lump_sweep(net, "lump", lumping(False), None, budget)[0]
    points += lump_sweep(net, "lump+refit", lumping(True), calibration, budget)[0]
    for value in grid["variants"]:
        if f"lump+refit+{value}" != headline_method():
            make = lumping(True, Similarity(value))
            points += lump_sweep(net, f"lump+refit+{value}", make, calibration, budget)[0]
    points += sweep_method(net, "exact", lambda _: Exact(), [0.0], None)
    points += sweep_method(net, "magnitude", Magnitude, grid["sparsities"], None)
    points += sweep_method(net, "wanda", Wanda, grid["sparsities"], calibration)
    points += sweep_method(net, "ec", EliminationCompensation, grid["sparsities"], calibration)
    points += sweep_method(net, "linear", LinearFolding, grid["taus"], calibration)
    points += scratch_points(net, cache, grid["scratch"])
    return points


def _onnxsim(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    return onnxsim_points(net, grid["onnxsim"])


def _onnxsim_low(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """onnxsim's sweep continued to lower sparsities where it has no point within dRMSE
    1% yet (it goes smallest size first and stops at its first point within 1%)."""
    mine = [p for p in previous if p.method == "onnxsim"]
    if not mine or any(p.drmse <= DONE_DRMSE for p in mine):
        return []
    return onnxsim_points(net, grid["onnxsim_low"])


def _refined_extra(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """More fixed sizes for lump+refine and distill: ``refine_mid`` targets below the size
    where lump+refine stopped (its first point within dRMSE 1%; larger sizes cannot
    change a headline), and ``refine_floor`` targets where even its smallest size was
    within 1%."""
    if not HAS_REFINE:
        return []
    mine = sorted((p for p in previous if p.method == "lump+refine"), key=lambda p: p.grp)
    if not mine:
        return []
    passed = [p.grp for p in mine if p.drmse <= DONE_DRMSE]
    stop = min(passed) if passed else 101.0
    targets = [t for t in grid["refine_mid"] if t < stop]
    if mine[0].drmse <= DONE_DRMSE:
        targets += list(grid["refine_floor"])
    headline = headline_method()
    retained = {p.knob: p.grp / 100 for p in previous if p.method == headline}
    make = lumping(True, DEFAULT_SIMILARITY_WITH_DATA)
    knobs = refine_knobs(net, make, retained, sorted(targets))
    have = {round(p.grp, 6) for p in mine}
    knobs = [e for e in knobs if round(100 * retained[e], 6) not in have]
    knobs = [e for e in knobs if 100 * retained[e] < stop]
    found = []
    for eps in knobs:  # each size on its own: the stop rule is already applied above
        found += refined_points(net, make, [eps], retained)
    log(f"  {net.ref.network}: lump+refine and distill at {len(knobs)} more sizes")
    return found


def _onnxsim_slow(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """onnxsim again at the lower sparsities it ran, with Adam at 1e-3: the larger sizes
    are near-lossless fits, where 3e-2 overshoots; both runs' points count."""
    ran = {p.knob for p in previous if p.method == "onnxsim"}
    todo = [s for s in grid["onnxsim_slow"] if s in ran]
    return onnxsim_points(net, todo, ONNXSIM_SLOW_LEARNING_RATE) if todo else []


def _onnxsim_floor(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """onnxsim at higher sparsities where even its smallest size was within dRMSE 1%."""
    mine = sorted((p for p in previous if p.method == "onnxsim"), key=lambda p: p.grp)
    if not mine or mine[0].drmse > DONE_DRMSE:
        return []
    return onnxsim_points(net, grid["onnxsim_floor"])


def _int8(net: Network, cache: Path, grid: dict, previous: list[Point]) -> list[Point]:
    """The original and lump+refine quantized to int8 (bench.quantized); the sizes come
    from the headline lumping's sweep when this run has it, else from a sweep of its own
    (unrefined, cheap)."""
    make = lumping(True, DEFAULT_SIMILARITY_WITH_DATA)
    label = headline_method()
    retained = {p.knob: p.grp / 100 for p in previous if p.method == label}
    if not retained:
        retained = lump_sweep(net, label, make, net.calibration, grid["budget"])[1]
    return int8_points(net, make, retained, grid["int8_targets"])


# Each group of methods is cached on its own, so a run can do the refined methods for
# every network first and a changed grid redoes only its own group.
GROUPS = {
    "refined": _refined,
    "onnxsim": _onnxsim,
    "baselines": _baselines,
    "onnxsim-low": _onnxsim_low,
    "refined-extra": _refined_extra,
    "onnxsim-floor": _onnxsim_floor,
    "onnxsim-slow": _onnxsim_slow,
    "int8": _int8,
}
GRID_KEYS = {
    "refined": ("budget", "refine_targets"),
    "onnxsim": ("onnxsim",),
    "onnxsim-low": ("onnxsim", "onnxsim_low"),
    "refined-extra": ("budget", "refine_targets", "refine_mid", "refine_floor"),
    "onnxsim-floor": ("onnxsim", "onnxsim_floor"),
    "onnxsim-slow": ("onnxsim", "onnxsim_low", "onnxsim_slow"),
    "baselines": ("baseline_budget", "sparsities", "taus", "scratch", "variants"),
    "int8": ("budget", "refine_targets", "int8_targets"),
}
# The groups that run onnx_lump's refine stage: their cache key also holds its budget
# (RefineOptions: iterations, jitter strengths, ...), so a changed refinement redoes them
# and leaves the peer's and the baselines' cached sweeps alone.
REFINE_GROUPS = ("refined", "refined-extra", "int8")


def run_network(
    task: str,
    data: Dataset,
    hidden,
    activation: str,
    cache: Path,
    quick: bool,
    fresh: bool,
    groups=tuple(GROUPS),
    previous: list[Point] | None = None,
) -> tuple[Reference, list[Point]]:
    """The points of one reference network for the given groups of methods (``previous``:
    its points from groups already run, which a later group may depend on)."""
    ref = reference(task, data, hidden, activation, cache, quick)
    grid = grids(quick)
    net = None
    points: list[Point] = []
    for group in groups:
        settings = [PROTOCOL_VERSION, ref.path.name, HAS_REFINE, group]
        settings += [grid[k] for k in GRID_KEYS[group]]
        if group in REFINE_GROUPS and HAS_REFINE:
            settings.append(repr(refine_budget(quick)))
        key = hashlib.sha1(json.dumps(settings, default=str).encode()).hexdigest()[:10]
        stored = cache / "points" / f"{ref.path.stem}_{group}_{key}.json"
        if stored.exists() and not fresh:
            cached = [point_from_dict(row) for row in json.loads(stored.read_text())]
            points += same_sizes(cached)
            continue
        if net is None:
            model = onnx.load(ref.path)
            net = Network(
                ref, data, model, calibration_feeds(model, data), predict(model, data.x_test), quick
            )
        started = time.perf_counter()
        found = GROUPS[group](net, cache, grid, [*(previous or []), *points])
        log(f"  {ref.network}: {group} in {time.perf_counter() - started:.0f} s")
        stored.parent.mkdir(parents=True, exist_ok=True)
        partial = stored.with_suffix(".tmp")
        partial.write_text(json.dumps([asdict(p) for p in found]))
        partial.replace(stored)  # whole or not at all
        points += found
    return ref, points
