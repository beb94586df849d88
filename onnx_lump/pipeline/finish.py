"""Stage 3 of the pipeline: the compressed model exported and checked, its report built,
and, where asked, its held-out error and its outputs against the original's measured by
onnxruntime."""

from __future__ import annotations

import json
import time

import onnx

from onnx_lump._version import __version__
from onnx_lump.data.calibration import random_inputs, random_inputs_note, token_mask
from onnx_lump.data.holdout import output_error, stack_outputs
from onnx_lump.graph.io.save import check_model
from onnx_lump.graph.io.tensordata import stored_parameters
from onnx_lump.graph.weightstats import weight_range_warnings
from onnx_lump.graph.write.export import export_model
from onnx_lump.methods import Lump, Method
from onnx_lump.pipeline.compress import Compressed
from onnx_lump.pipeline.options import CheckOptions
from onnx_lump.pipeline.prepare import Prepared
from onnx_lump.pipeline.report import Report
from onnx_lump.pipeline.verify import compare_outputs
from onnx_lump.runtime import run_model

__all__ = ["finish"]


def finish(
    prepared: Prepared,
    compressed: Compressed,
    method: Method,
    metric: str,
    check: CheckOptions,
    started: float,
) -> tuple[onnx.ModelProto, Report]:
    """The compressed model (its metadata stamped) and its report; ``started`` is when
    the call began (the report's seconds)."""
    model, c = prepared.model, compressed
    metadata = {
        "pkg.onnx_lump.version": __version__,
        "pkg.onnx_lump.method": method.describe(),
        "pkg.onnx_lump.widths_before": json.dumps(c.widths_before),
        "pkg.onnx_lump.widths_after": json.dumps(c.widths_after),
    }
    if isinstance(method, Lump):
        metadata["pkg.onnx_lump.eps"] = repr(method.options.eps)
        metadata["pkg.onnx_lump.ode.equivalence"] = method.options.equivalence.value
        metadata["pkg.onnx_lump.linkage"] = method.options.linkage.value
    if c.sequential:
        metadata["pkg.onnx_lump.sequential"] = "1"
    if c.refined:
        metadata["pkg.onnx_lump.refine_iterations"] = json.dumps([r.iterations for r in c.refined])
    reduced_model = export_model(prepared.graph if c.changed else None, model, metadata)
    if c.changed:  # else the graph is the input's own: nothing of ours to check
        check_model(reduced_model)  # any size, external data included
    seconds = time.perf_counter() - started  # the compression's; the checks come on top
    split, run_on, mask_input = prepared.split, prepared.run_on, prepared.options.mask_input
    notes = list(prepared.scan.notes)
    if c.changed:
        notes.extend(weight_range_warnings(c.weight_ranges))
    # Each model runs once on the held-out rows, for the error and the verification both
    # (the original once per search).
    expected = actual = None
    holdout_error = verification = None
    if split is not None and (check.measure_holdout or (check.verify and check.inputs is None)):
        assert prepared.cache is not None  # made with the split
        expected = prepared.cache.held_out_reference(model, split, run_on)
        actual = run_model(reduced_model, split.holdout, run_on)
        if check.measure_holdout:
            mask = token_mask(split.holdout, mask_input)
            holdout_error = output_error(
                stack_outputs(expected, mask), stack_outputs(actual, mask), split.targets, metric
            )
    if check.verify:
        feeds = check.inputs if check.inputs is not None else (split.holdout if split else None)
        if feeds is None:
            feeds = random_inputs(model, check.n_check, check.input_shapes)
            note = random_inputs_note(model, check.n_check, check.input_shapes)
            if note:
                notes.append(note)
        if expected is None or actual is None or split is None or feeds is not split.holdout:
            expected = run_model(model, feeds, run_on)
            actual = run_model(reduced_model, feeds, run_on)
        verification = compare_outputs(expected, actual, feeds, run_on, check.atol, check.rtol)
    report = Report(
        method.describe(),
        method.structured,
        c.stats,
        notes,
        seconds,
        c.shortcut_params,
        verification=verification,
        systems=c.systems,
        results=c.results,
        refine=c.refined,
        widths_after=c.widths_after,
        holdout=None if split is None else split.description,
        holdout_rows=0 if split is None else split.n_holdout,
        holdout_error=holdout_error,
        weight_ranges=c.weight_ranges if c.changed else [],
        metric=metric,
        model_params_before=stored_parameters(model),
        model_params_after=stored_parameters(reduced_model),
        split=split,
    )
    return reduced_model, report
