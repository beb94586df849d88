"""What a compress call reports: widths and parameters per layer, the held-out error,
the refinement and verification results, and the notes, as a table or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from onnx_lump.data.holdout import FLOAT, LABEL, LEFT_OUT, CalibrationSplit, OutputScore
from onnx_lump.data.refine import RefineStats
from onnx_lump.graph.weightstats import WeightRange
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.pipeline.quantize import QuantizeStep
from onnx_lump.pipeline.verify import VerificationResult
from onnx_lump.types import COSINE, RMSE, ChainResult, format_error

__all__ = ["LayerStats", "Report"]

_TIME_CAPS = "--refine-seconds, or what --time-limit left"


@dataclass(frozen=True)
class LayerStats:
    """Width and parameter count (weights + biases) of one dense layer, before and after;
    for unstructured methods ``params_after`` counts non-zero weights."""

    chain: int
    layer: str
    activation: str
    width_before: int
    width_after: int
    params_before: int
    params_after: int


@dataclass(frozen=True)
class Report:
    """What the pass did; ``verification`` is truthy when the outputs matched.

    Built once, by the stage that knows each field: a later stage (the written file's
    check, a search's final network) makes a new report with :func:`dataclasses.replace`
    rather than overwriting this one's fields."""

    method: str
    structured: bool
    layers: list[LayerStats]
    notes: list[str]
    seconds: float
    shortcut_params: int = 0
    verification: VerificationResult | None = None
    systems: list[OdeSystem] = field(default_factory=list, repr=False)
    results: list[ChainResult] = field(default_factory=list, repr=False)
    refine: list[RefineStats] = field(default_factory=list)
    widths_after: list[list[int]] = field(default_factory=list)
    holdout: str | None = None  # which inputs holdout_error was measured on
    holdout_rows: int = 0
    holdout_error: float | None = None
    # with audit rows: the error on the held-out rows that chose (biased low), beside it
    chosen_on: str | None = None
    chosen_error: float | None = None
    weight_ranges: list[WeightRange] = field(default_factory=list)
    # --quantize: the bytes and errors of the pass and of the quantization (the file
    # written); holdout_error and verification are then the quantized file's
    quantization: QuantizeStep | None = None
    # how holdout_error (and chosen_error) measure a float output: "rmse" or "cosine"
    metric: str = RMSE
    # the whole model, not only its chains: stored parameters (floating-point tensors,
    # and 8-bit ones once quantized) and bytes of the file with its external data (the
    # bytes where a file was written and measured; None otherwise)
    model_params_before: int | None = None
    model_params_after: int | None = None
    model_bytes_before: int | None = None
    model_bytes_after: int | None = None
    # the calibration rows held out (and fitted on): the written file is measured on the
    # same rows; in memory only, like systems and results
    split: CalibrationSplit | None = field(default=None, repr=False, compare=False)

    @property
    def params_before(self) -> int:
        return sum(s.params_before for s in self.layers)

    @property
    def params_after(self) -> int:
        return sum(s.params_after for s in self.layers) + self.shortcut_params

    @property
    def retained(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def holdout_outputs(self) -> tuple[OutputScore, ...]:
        """Each output's part of :attr:`holdout_error` (empty when it was not measured
        output by output, as for an error given as a plain number)."""
        return tuple(getattr(self.holdout_error, "outputs", ()))

    @property
    def label_changed(self) -> float | None:
        """The largest share of held-out rows whose label output changed (None without a
        label output): reported beside :attr:`holdout_error`, which is the worst float
        output's error and what a search is steered by."""
        return getattr(self.holdout_error, "label_changed", None)

    def error_text(self, value: float) -> str:
        """An error of this report as printed, in its metric's words
        (:func:`onnx_lump.types.format_error`; the value's own where it carries one, as a
        :class:`HeldOutError` does): ``4.23%`` or ``1-cos 0.0123 (cosine 0.9877)``."""
        return format_error(value, getattr(value, "metric", self.metric))

    def error_phrase(self, value: float, prefix: str = "error") -> str:
        """``error 4.23%`` for the relative RMSE, ``1-cos 0.0123 (cosine 0.9877)`` for
        the cosine metric (its own name says what it is)."""
        if getattr(value, "metric", self.metric) == COSINE:
            return self.error_text(value)
        return f"{prefix} {self.error_text(value)}"

    def model_line(self) -> str | None:
        """The whole model, before -> after: stored parameters and file bytes (None when
        not counted)."""
        if self.model_params_before is None or self.model_params_after is None:
            return None
        before, after = self.model_params_before, self.model_params_after
        kept = f" ({100 * after / before:.1f}% kept)" if before else ""
        line = f"whole model: stored parameters {before:,} -> {after:,}{kept}"
        if self.model_bytes_before is not None and self.model_bytes_after is not None:
            share = (
                self.model_bytes_after / self.model_bytes_before if self.model_bytes_before else 1
            )
            line += (
                f", file {self.model_bytes_before:,} -> {self.model_bytes_after:,} bytes "
                f"({100 * share:.1f}%)"
            )
        return line

    def holdout_detail(self) -> str | None:
        """What the one error number leaves out, for the headline: which output it is
        when there are several, and how many rows changed label (None for one output)."""
        scores = self.holdout_outputs
        if len(scores) < 2:
            return None
        parts = []
        if any(s.kind == FLOAT for s in scores):
            parts.append(f"of output '{getattr(self.holdout_error, 'worst', None)}'")
        for score in scores:
            if score.kind == LABEL and score.error is not None:
                parts.append(f"label '{score.name}' changed on {100 * score.error:.3g}% of rows")
        left_out = [s.name for s in scores if s.kind == LEFT_OUT]
        if left_out:
            parts.append("not measured: " + ", ".join(f"'{n}'" for n in left_out))
        return "; ".join(parts) or None

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "structured": self.structured,
            "shortcut_params": self.shortcut_params,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "retained": self.retained,
            "seconds": self.seconds,
            "layers": [vars(s) for s in self.layers],
            "notes": self.notes,
            "verification": None if self.verification is None else self.verification.to_dict(),
            "widths_after": self.widths_after,
            "refine": [vars(r) for r in self.refine],
            "holdout": self.holdout,
            "holdout_rows": self.holdout_rows,
            "metric": self.metric,
            "holdout_error": None if self.holdout_error is None else float(self.holdout_error),
            "holdout_outputs": [asdict(o) for o in self.holdout_outputs] or None,
            "holdout_label_changed": self.label_changed,
            "chosen_on": self.chosen_on,
            "chosen_error": None if self.chosen_error is None else float(self.chosen_error),
            "weight_ranges": [vars(w) for w in self.weight_ranges],
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
            "model": {
                "params_before": self.model_params_before,
                "params_after": self.model_params_after,
                "bytes_before": self.model_bytes_before,
                "bytes_after": self.model_bytes_after,
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A table of widths and parameters per layer, then the error and the notes."""
        kind = "" if self.structured else "  (unstructured: non-zero weights; graph not smaller)"
        lines = [
            f"method: {self.method}  time={self.seconds:.3f}s{kind}",
            f"{'chain':>5}  {'layer':<28} {'activation':<18} {'width':>13} {'params':>19}",
        ]
        for s in self.layers:
            lines.append(
                f"{s.chain:>5}  {s.layer[:28]:<28} {s.activation:<18} "
                f"{s.width_before:>6}->{s.width_after:<6} {s.params_before:>9}->{s.params_after:<9}"
            )
        if self.shortcut_params:
            label = "linear shortcuts"
            lines.append(f"{'':>5}  {label:<28} {'':<18} {'':>13} {'':>9}+{self.shortcut_params}")
        lines.append(
            f"{'total':>5}  {'':<28} {'':<18} {'':>13} "
            f"{self.params_before:>9}->{self.params_after:<9} ({100 * self.retained:.1f}% kept)"
        )
        model_line = self.model_line()
        if model_line is not None:
            lines.append(model_line)
        # refinement's own measure: the chain output's relative RMSE, whatever the metric
        own = "chain output RMSE (refinement's loss) " if self.metric == COSINE else "error "
        for index, r in enumerate(self.refine):
            trials = r.trial_iterations
            probed = f" (+{trials} probing other strengths)" if trials else ""
            bound = f" (of {r.budget}: the work bound of a chain this wide)" if r.work_bound else ""
            lines.append(
                f"refine: {r.iterations} iterations{bound}{probed} in {r.seconds:.2f}s, jitter "
                f"{r.jitter:g}, held-out {own}"
                f"{100 * r.holdout_before:.3g}% -> {100 * r.holdout_after:.3g}%"
                + ("" if r.improved else " (no gain: kept the unrefined weights)")
                + (
                    " -- stopped by the time cap (--refine-seconds, or what --time-limit left)"
                    if r.time_capped
                    else ""
                )
                + (f" [chain {index}]" if len(self.refine) > 1 else "")
            )
        if self.weight_ranges:
            before = max(w.weight_before for w in self.weight_ranges)
            after = max(w.weight_after for w in self.weight_ranges)
            lines.append(f"max |weight|: {before:.3g} -> {after:.3g}")
        if self.quantization is not None:
            lines += self.quantization.summary_lines(self.metric)
        if self.holdout_error is not None:
            lines.append(f"{self.error_phrase(self.holdout_error)} on {self.holdout}")
            if self.chosen_error is not None:
                lines.append(f"{self.error_phrase(self.chosen_error)} on {self.chosen_on}")
            lines += self._holdout_lines()
        if self.verification is not None:
            v = self.verification
            for out in v.outputs:
                if out.kind == LABEL and out.changed is not None:
                    lines.append(
                        f"output '{out.name}': label changed on {out.changed} of {out.rows} rows "
                        f"({v.n_samples} samples, {', '.join(v.providers)})"
                    )
                    continue
                lines.append(
                    f"output '{out.name}': max abs {out.max_abs:.3g}, max rel {out.max_rel:.3g}, "
                    f"rmse {out.rmse:.3g} (reference rms {out.reference_rms:.3g}; "
                    f"{v.n_samples} samples, {', '.join(v.providers)})"
                )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _holdout_lines(self) -> list[str]:
        """One line per output under the held-out error, when the model has several: a
        float output's own error (the worst is the one reported), a label output's share
        of rows whose label changed, and why an output was left out."""
        scores = self.holdout_outputs
        if len(scores) < 2:
            return []
        lines = []
        for score in scores:
            note = f" ({score.note})" if score.note else ""
            if score.kind == FLOAT and score.error is not None:
                reported = getattr(self.holdout_error, "worst", None)
                worst = " (the worst: reported)" if score.name == reported else ""
                lines.append(
                    f"  held-out output '{score.name}': {self.error_phrase(score.error)}"
                    f"{worst}{note}"
                )
            elif score.kind == LABEL and score.error is not None:
                lines.append(
                    f"  held-out output '{score.name}': label changed on {score.changed} of "
                    f"{score.rows} rows ({100 * score.error:.3g}%){note}"
                )
            else:
                lines.append(f"  held-out output '{score.name}': not measured (it {score.note})")
        return lines
