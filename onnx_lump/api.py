"""The pass as one call: read chains, encode, compress with a method, rewrite, verify."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_lump import __version__
from onnx_lump.calibration import chain_inputs, random_inputs
from onnx_lump.chains import DenseChain, scan_graph
from onnx_lump.equivalence import Equivalence, PartitionOptions, Similarity
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage
from onnx_lump.methods import ChainProblem, ChainResult, Lump, Method
from onnx_lump.methods.lumping import DEFAULT_RIDGE, DEFAULT_SIMILARITY_WITH_DATA
from onnx_lump.ode import OdeSystem, encode_chain
from onnx_lump.rewrite import export_model, rewrite_chain
from onnx_lump.runtime import resolve_providers
from onnx_lump.verify import VerificationResult, compare_models

__all__ = ["LayerStats", "Report", "compress", "lump"]

logger = logging.getLogger(__name__)


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


@dataclass
class Report:
    """What the pass did; ``verification`` is truthy when the outputs matched."""

    method: str
    structured: bool
    layers: list[LayerStats]
    notes: list[str]
    seconds: float
    shortcut_params: int = 0
    verification: VerificationResult | None = None
    systems: list[OdeSystem] = field(default_factory=list, repr=False)

    @property
    def params_before(self) -> int:
        return sum(s.params_before for s in self.layers)

    @property
    def params_after(self) -> int:
        return sum(s.params_after for s in self.layers) + self.shortcut_params

    @property
    def retained(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

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
        if self.verification is not None:
            v = self.verification
            for out in v.outputs:
                lines.append(
                    f"output '{out.name}': max abs {out.max_abs:.3g}, max rel {out.max_rel:.3g}, "
                    f"rmse {out.rmse:.3g} (reference rms {out.reference_rms:.3g}; "
                    f"{v.n_samples} samples, {', '.join(v.providers)})"
                )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def lump(
    model: onnx.ModelProto,
    eps: float = 0.0,
    *,
    equivalence: str | Equivalence = Equivalence.BACKWARD,
    linkage: str | Linkage = Linkage.SINGLE,
    symmetries: bool = True,
    similarity: str | Similarity | None = None,
    calibration: Mapping[str, np.ndarray] | None = None,
    refit: bool = True,
    ridge: float = DEFAULT_RIDGE,
    **kwargs,
) -> tuple[onnx.ModelProto, Report]:
    """Merge epsilon-equivalent neurons of every dense chain of ``model``.

    Data-free unless ``calibration`` inputs are given; then each next layer is refit in
    closed form (unless ``refit`` is False) and ``similarity`` defaults to
    ``DEFAULT_SIMILARITY_WITH_DATA``. Other keyword arguments go to
    :func:`compress`. Returns a new model (``model`` is not modified) and a Report.
    """
    if similarity is None:
        similarity = Similarity.WEIGHTS if calibration is None else DEFAULT_SIMILARITY_WITH_DATA
    options = PartitionOptions(
        float(eps),
        Equivalence(equivalence),
        Linkage(linkage),
        bool(symmetries),
        Similarity(similarity),
    )
    return compress(
        model, Lump(options, refit=refit, ridge=ridge), calibration=calibration, **kwargs
    )


def compress(
    model: onnx.ModelProto,
    method: Method,
    *,
    calibration: Mapping[str, np.ndarray] | None = None,
    verify: bool = True,
    inputs: Mapping[str, np.ndarray] | None = None,
    n_check: int = 64,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    providers: Sequence[str] = ("cpu",),
    atol: float | None = None,
    rtol: float | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Compress every dense chain of ``model`` with ``method``.

    ``calibration`` feeds the data-aware methods. With ``verify``, both models run in
    onnxruntime on ``inputs`` (else ``calibration``, else ``n_check`` seeded random
    inputs) and ``report.verification`` holds the output errors, judged against
    ``atol``/``rtol`` when given.
    """
    if method.needs_data and calibration is None:
        raise LumpError(f"method '{method.name}' needs calibration inputs (--calib)")
    started = time.perf_counter()
    run_on = resolve_providers(providers)
    graph = gs.import_onnx(model)
    scan = scan_graph(graph)
    if not scan.chains:
        raise LumpError(
            "no dense chain found: need two or more Gemm/MatMul(+Add) layers with constant "
            "weights joined by Relu, LeakyRelu, Tanh, Sigmoid or nothing"
        )
    activations = [None] * len(scan.chains)
    if calibration is not None:
        activations = chain_inputs(model, scan.chains, calibration, run_on)
    stats, systems, widths_before, widths_after, shortcut_params = [], [], [], [], 0
    changed = False
    for index, (chain, data) in enumerate(zip(scan.chains, activations, strict=True)):
        system = encode_chain(chain, name=f"chain{index}")
        result = method.compress(ChainProblem(system, data))
        stats += _layer_stats(index, chain, result, method.structured)
        shortcut_params += sum(_count(s.weight, method.structured) for s in result.shortcuts)
        changed |= rewrite_chain(graph, chain, result.layers, result.shortcuts)
        systems.append(system)
        widths_before.append(chain.hidden_widths)
        widths_after.append([layer.out_features for layer in result.layers[:-1]])
        logger.info("chain %d: hidden widths %s -> %s", index, widths_before[-1], widths_after[-1])
    metadata = {
        "onnx_lump.version": __version__,
        "onnx_lump.method": method.describe(),
        "onnx_lump.widths_before": json.dumps(widths_before),
        "onnx_lump.widths_after": json.dumps(widths_after),
    }
    if isinstance(method, Lump):
        metadata["onnx_lump.eps"] = repr(method.options.eps)
        metadata["onnx_lump.equivalence"] = method.options.equivalence.value
        metadata["onnx_lump.linkage"] = method.options.linkage.value
    reduced_model = export_model(graph if changed else None, model, metadata)
    if changed:  # else the graph is the input's own: nothing of ours to check
        onnx.checker.check_model(reduced_model)
    seconds = time.perf_counter() - started
    report = Report(
        method.describe(),
        method.structured,
        stats,
        scan.notes,
        seconds,
        shortcut_params,
        systems=systems,
    )
    if verify:
        feeds = inputs if inputs is not None else calibration
        if feeds is None:
            feeds = random_inputs(model, n_check, input_shapes)
        report.verification = compare_models(model, reduced_model, feeds, run_on, atol, rtol)
    return reduced_model, report


def _count(weight: np.ndarray, structured: bool) -> int:
    return int(weight.size if structured else np.count_nonzero(weight))


def _layer_stats(
    index: int, chain: DenseChain, result: ChainResult, structured: bool
) -> list[LayerStats]:
    stats = []
    acts = [a.describe() for a in chain.activations] + ["(chain output)"]
    for layer, new, act in zip(chain.layers, result.layers, acts, strict=True):
        has_bias = layer.bias_ref is not None or bool(new.bias.any())
        stats.append(
            LayerStats(
                chain=index,
                layer=layer.name,
                activation=act,
                width_before=layer.out_features,
                width_after=new.out_features,
                params_before=layer.n_params,
                params_after=_count(new.weight, structured) + (new.out_features if has_bias else 0),
            )
        )
    return stats
