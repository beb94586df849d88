"""Where a size search starts: the knob at which every chain keeps about the share of its
neurons that meets a parameter target (:func:`knob_hint`), from the share a chain's
first hidden layer must keep (:func:`uniform_width_share`) and how the later layers
followed it in an earlier step (:func:`width_ratios`). It reads the chains and rows
through the search's cache, as the pipeline does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnx_lump.data.cache import SearchCache
from onnx_lump.graph.io.source import to_model_proto
from onnx_lump.graph.read.chains import scan_graph
from onnx_lump.graph.read.dense import DenseChain
from onnx_lump.graph.write.importer import import_graph, release_chain
from onnx_lump.graph.write.spill import Spill
from onnx_lump.methods import ChainProblem, Method
from onnx_lump.methods.gated import gated_knob_hint, handles_gated
from onnx_lump.pipeline.options import CalibrationOptions
from onnx_lump.pipeline.prepare import chain_encoding, chain_rows
from onnx_lump.pipeline.report import Report
from onnx_lump.runtime import resolve_providers

__all__ = ["knob_hint", "uniform_width_share", "width_ratios"]


def knob_hint(
    model: onnx.ModelProto,
    method: Method,
    target_params: float,
    calibration: Mapping[str, np.ndarray],
    cache: SearchCache,
    *,
    data: CalibrationOptions | None = None,
    providers: Sequence[str] = ("cpu",),
    after: Report | None = None,
    slack: float = 0.0,
) -> float | None:
    """A knob of ``method`` near the one keeping ``target_params`` (a fraction) of the
    dense chains' parameters, for a size search to start from (None when the method has
    no cheap estimate): the knob at which each chain's first hidden layer keeps the
    share of its neurons that meets the target when every hidden layer keeps as much
    (or, given the report of a step ``after``, when the later layers follow the first
    as they did there: :func:`width_ratios`; ``slack``: the share of that width it may
    fall short by, for a rough hint), from :func:`uniform_width_share`, averaged
    over chains in log space, weighted by their parameters. It reads the chains and
    calibration rows through ``cache`` (the search's own), as :func:`compress` does, so
    the steps reuse them. A model that keeps its weights on disk is read one chain at a
    time, as compress reads it."""
    model = to_model_proto(model)
    on_disk = Spill.for_model(model) is not None
    run_on = resolve_providers(providers)
    scan = scan_graph(import_graph(model))
    if not scan.chains:
        return None
    options = data or CalibrationOptions()
    _, fit_inputs, held_inputs = chain_rows(model, scan.chains, calibration, options, cache, run_on)
    ratios = None if after is None else width_ratios(after, scan.chains)
    share = uniform_width_share(scan.chains, target_params, ratios)
    logs, weights = [], []
    for index, chain in enumerate(scan.chains):
        if chain.gate is not None and not handles_gated(method):
            continue  # left as it is, and out of the counts
        memo = cache.chain(index)
        system = chain_encoding(chain, index, None if on_disk else memo)
        problem = ChainProblem(system, fit_inputs[index], held_inputs[index], memo)
        if chain.gate is not None:
            hint = gated_knob_hint(chain, problem, method, share)
        else:
            hint = method.knob_hint(problem, share, slack)
        del problem
        del system
        release_chain(chain)
        if hint is None or hint <= 0:
            return None
        logs.append(np.log(hint))
        weights.append(chain.n_params)
    if not logs:
        return None
    return float(np.exp(np.average(logs, weights=weights)))


def uniform_width_share(
    chains: Sequence[DenseChain],
    target_params: float,
    ratios: Sequence[Sequence[float] | None] | None = None,
) -> float:
    """The share f of its neurons every chain's first hidden layer would keep for the
    chains to keep ``target_params`` of their parameters, when each hidden layer keeps
    f times its ``ratios`` entry (per chain, per hidden layer; 1 for all when None):
    the positive root of B f^2 + A f + C = target x total, where B counts the weights
    between two hidden layers, A those between a hidden layer and a chain's input or
    output plus the hidden biases, and C the output biases (each count weighted by the
    ratios of the hidden layers it joins)."""
    quadratic = linear = constant = total = 0.0
    for index, chain in enumerate(chains):
        hidden = len(chain.layers) - 1
        ratio = (ratios[index] if ratios is not None else None) or [1.0] * hidden
        for position, layer in enumerate(chain.layers):
            total += layer.n_params
            bias = layer.n_params - layer.in_features * layer.out_features
            inner, outer = position > 0, position < hidden
            weights = layer.in_features * layer.out_features
            into = ratio[position - 1] if inner else 1.0
            out = ratio[position] if outer else 1.0
            if inner and outer:
                quadratic += weights * into * out
            else:
                linear += weights * (into if inner else out)
            if outer:
                linear += bias * out
            else:
                constant += bias
        gate = getattr(chain, "gate", None)  # anything with layers will do (no gate)
        if gate is not None:  # the gate's rows go with the up rows
            total += gate.n_params
            linear += gate.n_params * ratio[0]
    goal = target_params * total - constant
    if goal <= 0 or quadratic + linear == 0:
        return 0.0
    if quadratic == 0:
        return min(1.0, goal / linear)
    root = (-linear + np.sqrt(linear * linear + 4.0 * quadratic * goal)) / (2.0 * quadratic)
    return float(min(1.0, root))


def width_ratios(report: Report, chains: Sequence[DenseChain]) -> list[list[float] | None]:
    """Per chain, the share of its neurons each hidden layer kept in ``report`` over the
    share the first kept (None for a chain the report does not describe, or whose
    first layer kept nothing): how the later layers followed the first."""
    ratios: list[list[float] | None] = []
    for index, chain in enumerate(chains):
        stats = [s for s in report.layers if s.chain == index]
        if len(stats) != len(chain.layers) or len(stats) < 2 or stats[0].width_after <= 0:
            ratios.append(None)
            continue
        shares = [s.width_after / max(s.width_before, 1) for s in stats[:-1]]
        ratios.append([share / shares[0] for share in shares])
    return ratios
