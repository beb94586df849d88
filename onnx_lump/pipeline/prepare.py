"""Stage 1 of the pipeline: read the model's chains and, with calibration inputs, split
them and collect every chain's input on the fitting and held-out rows."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_lump.data.cache import SearchCache
from onnx_lump.data.calibration import chain_inputs, check_feeds, token_mask
from onnx_lump.data.holdout import CalibrationSplit, split_calibration
from onnx_lump.errors import LumpError
from onnx_lump.graph.read.chains import GraphScan, scan_graph
from onnx_lump.graph.read.dense import DenseChain
from onnx_lump.graph.write.importer import import_graph
from onnx_lump.ode.encoding import OdeSystem, encode_chain
from onnx_lump.pipeline.options import CalibrationOptions
from onnx_lump.progress import stage

__all__ = ["Prepared", "chain_encoding", "chain_rows", "prepare"]

logger = logging.getLogger("onnx_lump.api")  # the warnings users filter keep their name


@dataclass(eq=False)
class Prepared:
    """What the later stages read: the model, its graph (which the rewrite changes) and
    chains, the providers, and with calibration inputs the split, each chain's input on
    the fitting and held-out rows, and the search's ``cache``."""

    model: onnx.ModelProto
    graph: gs.Graph
    scan: GraphScan
    run_on: list[str]
    options: CalibrationOptions
    split: CalibrationSplit | None = None
    fit_inputs: Sequence[np.ndarray | None] = ()
    held_inputs: Sequence[np.ndarray | None] = ()
    cache: SearchCache | None = None


def prepare(
    model: onnx.ModelProto,
    calibration: Mapping[str, np.ndarray] | None,
    options: CalibrationOptions,
    cache: SearchCache | None,
    run_on: list[str],
    warm_start_chains: int | None = None,
) -> Prepared:
    """Read the chains (a graph without one is a :class:`LumpError` saying why, as is a
    warm start for another number of chains) and, with ``calibration``, collect their
    rows through ``cache`` (a search's, or one of this call's own)."""
    graph = import_graph(model)  # lazy constants; nodes tagged for export_model
    scan = scan_graph(graph)
    if not scan.chains:
        raise LumpError(
            "no dense chain found: need two or more Gemm/MatMul(+Add) layers with constant "
            "weights joined by element-wise activations or nothing" + scan.why_no_chain()
        )
    if warm_start_chains is not None and warm_start_chains != len(scan.chains):
        raise LumpError(f"warm start has {warm_start_chains} chains, the model {len(scan.chains)}")
    prepared = Prepared(model, graph, scan, run_on, options)
    prepared.fit_inputs = prepared.held_inputs = [None] * len(scan.chains)
    if calibration is None:
        return prepared
    calibration = check_feeds(calibration, model, "calibration")
    if options.validation is not None:
        validation = check_feeds(options.validation, model, "validation")
        options = prepared.options = dataclasses.replace(options, validation=validation)
    if cache is None:
        cache = SearchCache(across_calls=False)  # one call: nothing is kept beyond it
    prepared.cache = cache
    prepared.split, prepared.fit_inputs, prepared.held_inputs = chain_rows(
        model, scan.chains, calibration, options, cache, run_on
    )
    # once per search (the cache's lifetime): its steps all have the same rows
    scan.notes.extend(
        cache.get(
            "small calibration",
            lambda: _small_calibration_notes(scan.chains, prepared.fit_inputs),
        )
    )
    return prepared


def chain_rows(
    model: onnx.ModelProto,
    chains: Sequence[DenseChain],
    calibration: Mapping[str, np.ndarray],
    options: CalibrationOptions,
    cache: SearchCache,
    run_on,
) -> tuple[CalibrationSplit, list[np.ndarray], list[np.ndarray]]:
    """The calibration split and every chain's input on its fitting and held-out rows
    (padding left out, see :func:`token_mask`), computed once per ``cache``."""
    o = options
    cache.bind(
        model,
        calibration,
        o.holdout,
        o.seed,
        id(o.validation),
        id(o.validation_targets),
        o.mask_input,
    )
    split = cache.get(
        "split",
        lambda: split_calibration(
            calibration, o.holdout, o.seed, o.validation, o.validation_targets
        ),
    )

    def collect(rows, which: str):
        count = int(next(iter(rows.values())).shape[0]) if rows else 0
        stage(f"collecting the chains' inputs on the {count} {which} rows")
        return chain_inputs(model, chains, rows, run_on, token_mask(rows, o.mask_input))

    fit = cache.get(("fit", str(run_on)), lambda: collect(split.fit, "fitting"))
    held = cache.get(("held", str(run_on)), lambda: collect(split.holdout, "held-out"))
    return split, fit, held


def chain_encoding(chain: DenseChain, index: int, memo) -> OdeSystem:
    """The chain's ODE encoding, made once per ``memo`` (a search's chain cache) when
    there is one."""
    encode = functools.partial(encode_chain, chain, name=f"chain{index}")
    return encode() if memo is None else memo.get("system", encode, pin=True)


def _small_calibration_notes(chains, fit_inputs) -> list[str]:
    """A warning per chain whose fitting rows cannot pin down its widest layer: a refit
    (or refinement) from fewer rows than a layer's inputs interpolates the rows."""
    notes = []
    for index, (chain, rows) in enumerate(zip(chains, fit_inputs, strict=True)):
        widest = max(layer.in_features for layer in chain.layers)
        if rows.shape[0] <= widest:
            message = (
                f"chain {index}: only {rows.shape[0]} fitting rows for layers with up to "
                f"{widest} inputs; give at least {widest + 1} calibration rows (more is better)"
            )
            logger.warning(message)
            notes.append(message)
    return notes
