"""Stage 4 of the pipeline: the compressed model written the one way every caller writes
it. The file is staged beside its destination, checked, quantized where asked, and run
from the staged file by onnxruntime against the original; the report that comes back is
built from what that file did, and the caller commits (moves it into place) or leaves
it, in which case nothing is written. The command line and :func:`onnx_lump.compress`
with ``out=`` both come through here."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_lump.data.calibration import (
    AUTO_MASK_INPUT,
    random_inputs,
    random_inputs_note,
    token_mask,
)
from onnx_lump.data.holdout import AuditSplit, output_error, stack_outputs
from onnx_lump.errors import LumpError
from onnx_lump.graph.inventory import Inventory, take_inventory
from onnx_lump.graph.io.save import StagedModel, check_model_file, stage_model
from onnx_lump.graph.io.tensordata import file_size, parse_model_file
from onnx_lump.pipeline.options import CheckOptions
from onnx_lump.pipeline.quantize import QuantizeInfo, QuantizeStep, quantize_file, quantized_copy
from onnx_lump.pipeline.report import Report
from onnx_lump.pipeline.verify import VerificationResult, compare_outputs
from onnx_lump.runtime import run_model
from onnx_lump.types import RMSE

__all__ = ["FileChecks", "Reference", "Written", "measure_written", "write_checked"]

QUANTIZE_NOTE = (
    "int8 is lossy: the held-out error and the verification compare the int8 file with "
    "the original float model, so they include the quantization's error (at --eps 0, "
    "they are the quantization's alone); --atol/--rtol/--max-error judge that total"
)


class Reference:
    """The original model's outputs on a set of rows, run once by onnxruntime however
    many files are compared with it (the pass's file and its quantized form, or each
    network a search hands over)."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, providers: Sequence) -> None:
        self.model, self.providers = model, providers
        self._outputs: dict[int, tuple[Mapping, dict]] = {}  # id(rows) -> (rows, outputs)

    def outputs(self, rows: Mapping[str, np.ndarray]) -> dict:
        if id(rows) not in self._outputs:  # the rows are kept, so their id stays theirs
            self._outputs[id(rows)] = (rows, run_model(self.model, rows, self.providers))
        return self._outputs[id(rows)][1]

    def error(
        self,
        reduced: onnx.ModelProto | str | os.PathLike,
        rows: Mapping[str, np.ndarray],
        checks: FileChecks,
        quantize: str | None = None,
    ) -> float:
        """The error (by ``checks.metric``) of ``reduced`` against the original on
        ``rows``, quantized first where ``quantize`` names a scheme (as it would be
        written)."""
        with contextlib.ExitStack() as stack:
            if quantize is not None and isinstance(reduced, onnx.ModelProto):
                reduced, _ = stack.enter_context(quantized_copy(reduced, quantize))
            actual = run_model(reduced, rows, self.providers)
        mask = token_mask(rows, checks.mask_input)
        expected = stack_outputs(self.outputs(rows), mask)
        return output_error(expected, stack_outputs(actual, mask), metric=checks.metric)


@dataclass(frozen=True, eq=False)
class FileChecks:
    """What the written file is measured on and judged by. The held-out error is
    measured on the report's held-out rows (``Report.split``), or, with ``audit`` rows
    that no fit or choice used, on those (the held-out rows' error is then kept beside
    it); ``measure_holdout`` False leaves it out. With ``verify``, the outputs are
    compared on ``inputs``, else the audit rows, else the held-out rows, else ``n_check``
    seeded random inputs of ``input_shapes``, and judged against ``atol``/``rtol``."""

    metric: str = RMSE
    mask_input: str | None = AUTO_MASK_INPUT
    audit: AuditSplit | None = None
    measure_holdout: bool = True
    verify: bool = True
    inputs: Mapping[str, np.ndarray] | None = None
    n_check: int = 64
    input_shapes: Mapping[str, Sequence[int]] | None = None
    atol: float | None = None
    rtol: float | None = None

    @classmethod
    def of(
        cls,
        check: CheckOptions,
        metric: str = RMSE,
        mask_input: str | None = AUTO_MASK_INPUT,
        audit: AuditSplit | None = None,
    ) -> FileChecks:
        """The checks of ``check`` (what the in-memory check would run), on the file."""
        return cls(
            metric=metric,
            mask_input=mask_input,
            audit=audit,
            measure_holdout=check.measure_holdout,
            verify=check.verify,
            inputs=check.inputs,
            n_check=check.n_check,
            input_shapes=check.input_shapes,
            atol=check.atol,
            rtol=check.rtol,
        )


@dataclass(frozen=True, eq=False)
class _Measured:
    holdout_error: float | None = None
    chosen_error: float | None = None
    verification: VerificationResult | None = None


@dataclass(frozen=True, eq=False)
class Written:
    """A staged file and the report of what it did; :meth:`commit` moves it into place.
    ``before``/``after`` inventory the original and the staged file (ops, parameters,
    bytes)."""

    staged: StagedModel
    report: Report
    before: Inventory
    after: Inventory

    @property
    def passed(self) -> bool:
        """False when the verification ran and exceeded the tolerance."""
        return self.report.verification is None or bool(self.report.verification)

    def commit(self) -> None:
        self.staged.commit()


@contextlib.contextmanager
def write_checked(
    model: onnx.ModelProto,
    out: str | os.PathLike,
    report: Report,
    original: onnx.ModelProto,
    reference: Reference,
    checks: FileChecks,
    *,
    original_path: str | os.PathLike | None = None,
    external_data: bool = False,
    quantize: str | None = None,
) -> Iterator[Written]:
    """Stage ``model`` beside ``out``, check the staged file, quantize it in place where
    ``quantize`` names a scheme, and measure it against ``reference`` (``original``'s
    outputs) as ``checks`` says. Yields :class:`Written` with the report built from the
    file (a new report; ``report`` is left as it was); leaving the context without
    :meth:`Written.commit` writes nothing."""
    with stage_model(model, out, external_data=external_data) as staged:
        check_model_file(staged.path)
        notes = list(report.notes)
        feeds = _check_feeds(report, original, checks, notes)
        before = take_inventory(original, original_path)
        quantization = None
        if quantize is not None:
            original_bytes = before.bytes if before.bytes is not None else original.ByteSize()
            quantization = _quantize_staged(
                staged, quantize, original_bytes, report, reference, checks, feeds
            )
            notes.append(QUANTIZE_NOTE)
            check_model_file(staged.path)
        measured = _measure(staged.path, report, reference, checks, feeds)
        # quantized, the file written is no longer the pass's model: read it back
        written = parse_model_file(staged.path) if quantize is not None else model
        after = take_inventory(written, staged.path)
        if quantization is not None:
            quantization = dataclasses.replace(
                quantization,
                int8_error=measured.holdout_error,
                int8_max_abs=(
                    None if measured.verification is None else measured.verification.max_abs
                ),
            )
        changes = {
            **_measured_fields(report, measured, checks),
            "notes": notes,
            "quantization": quantization,
            "model_params_before": before.parameters + before.int8_parameters,
            "model_params_after": after.parameters + after.int8_parameters,
            "model_bytes_before": before.bytes,
            "model_bytes_after": after.bytes,
        }
        yield Written(staged, dataclasses.replace(report, **changes), before, after)


def measure_written(
    path: str | os.PathLike,
    report: Report,
    original: onnx.ModelProto,
    reference: Reference,
    checks: FileChecks,
) -> Report:
    """A new report with the held-out error and the verification of the model file at
    ``path`` (written by someone else: an Olive pass's output), measured as
    :func:`write_checked` measures its staged file."""
    notes = list(report.notes)
    feeds = _check_feeds(report, original, checks, notes)
    measured = _measure(Path(path), report, reference, checks, feeds)
    return dataclasses.replace(report, notes=notes, **_measured_fields(report, measured, checks))


def _measured_fields(report: Report, measured: _Measured, checks: FileChecks) -> dict:
    """The report's fields a measured file sets."""
    fields: dict = {"verification": measured.verification}
    if measured.holdout_error is not None:
        fields["holdout_error"] = measured.holdout_error
    if checks.audit is not None and report.split is not None:
        fields["chosen_on"] = (
            f"the {report.split.n_holdout} held-out rows refinement and the search chose on"
        )
        fields["chosen_error"] = measured.chosen_error
        fields["holdout"] = checks.audit.description
        fields["holdout_rows"] = checks.audit.n_audit
    return fields


def _check_feeds(
    report: Report, original: onnx.ModelProto, checks: FileChecks, notes: list[str]
) -> Mapping[str, np.ndarray] | None:
    """The inputs the outputs are compared on (None: no verification)."""
    if not checks.verify:
        return None
    if checks.inputs is not None:
        return checks.inputs
    if checks.audit is not None:
        return checks.audit.audit
    if report.split is not None:
        return report.split.holdout
    note = random_inputs_note(original, checks.n_check, checks.input_shapes)
    if note:
        notes.append(note)
    return random_inputs(original, checks.n_check, checks.input_shapes)


def _measure(
    path: Path,
    report: Report,
    reference: Reference,
    checks: FileChecks,
    feeds: Mapping[str, np.ndarray] | None,
) -> _Measured:
    """The file's held-out error (on the audit rows when some were set aside, beside the
    error on the rows that chose) and its verification on ``feeds``, by onnxruntime on
    the file at ``path``; each model runs once on rows both use."""
    actual: dict[int, dict] = {}

    def run(rows) -> dict:
        if id(rows) not in actual:
            actual[id(rows)] = run_model(path, rows, reference.providers)
        return actual[id(rows)]

    def error(rows, targets=None) -> float:
        mask = token_mask(rows, checks.mask_input)
        return output_error(
            stack_outputs(reference.outputs(rows), mask),
            stack_outputs(run(rows), mask),
            targets,
            checks.metric,
        )

    split, holdout_error, chosen_error = report.split, None, None
    if split is not None and checks.measure_holdout:
        holdout_error = error(split.holdout, split.targets)
    if checks.audit is not None:
        chosen_error, holdout_error = holdout_error, error(checks.audit.audit)
    verification = None
    if feeds is not None:
        verification = compare_outputs(
            reference.outputs(feeds),
            run(feeds),
            feeds,
            reference.providers,
            atol=checks.atol,
            rtol=checks.rtol,
        )
    return _Measured(holdout_error, chosen_error, verification)


def _quantize_staged(
    staged: StagedModel,
    scheme: str,
    original_bytes: int,
    report: Report,
    reference: Reference,
    checks: FileChecks,
    feeds: Mapping[str, np.ndarray] | None,
) -> QuantizeStep:
    """Measure the pass's staged file (bytes, held-out error, max abs error), then
    quantize it in place (its data file too): the staged file becomes the one written."""
    lumped = _measure(staged.path, report, reference, checks, feeds)
    step = QuantizeStep(
        QuantizeInfo(scheme),
        bytes_input=original_bytes,
        bytes_lumped=file_size(staged.path),
        lumped_error=lumped.holdout_error,
        lumped_max_abs=None if lumped.verification is None else lumped.verification.max_abs,
    )
    folder = staged.staging / "quantized"
    folder.mkdir()
    target = folder / staged.path.name
    step.info = quantize_file(
        staged.path, target, scheme, external_data=staged.data_path is not None
    )
    try:
        if staged.data_path is not None:
            os.replace(folder / staged.data_path.name, staged.data_path)
        os.replace(target, staged.path)
    except OSError as exc:
        raise LumpError(f"cannot write '{staged.output}': {exc.strerror or exc}") from exc
    step.bytes_int8 = file_size(staged.path)
    return step
