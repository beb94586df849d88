"""The pass as one call: read chains, encode, partition, reduce, rewrite, verify."""

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
from onnx_lump.chains import DenseChain, scan_graph
from onnx_lump.equivalence import Equivalence, PartitionOptions, compute_partition
from onnx_lump.errors import LumpError
from onnx_lump.grouping import Linkage
from onnx_lump.ode import OdeSystem, encode_chain
from onnx_lump.reduction import ReducedLayer, reduce_system
from onnx_lump.rewrite import export_model, rewrite_chain
from onnx_lump.verify import VerificationResult, compare_models, random_inputs, resolve_providers

__all__ = ["LayerStats", "Report", "lump"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerStats:
    """Width and parameter count (weights + biases) of one dense layer, before and after."""

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

    options: PartitionOptions
    layers: list[LayerStats]
    notes: list[str]
    seconds: float
    verification: VerificationResult | None = None
    systems: list[OdeSystem] = field(default_factory=list, repr=False)

    @property
    def params_before(self) -> int:
        return sum(s.params_before for s in self.layers)

    @property
    def params_after(self) -> int:
        return sum(s.params_after for s in self.layers)

    @property
    def retained(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        return {
            "eps": self.options.eps,
            "equivalence": self.options.equivalence.value,
            "linkage": self.options.linkage.value,
            "symmetries": self.options.symmetries,
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
        o = self.options
        lines = [
            f"eps={o.eps:g}  equivalence={o.equivalence.value}  linkage={o.linkage.value}  "
            f"symmetries={'on' if o.symmetries else 'off'}  time={self.seconds:.3f}s",
            f"{'chain':>5}  {'layer':<28} {'activation':<18} {'width':>13} {'params':>19}",
        ]
        for s in self.layers:
            lines.append(
                f"{s.chain:>5}  {s.layer[:28]:<28} {s.activation:<18} "
                f"{s.width_before:>6}->{s.width_after:<6} {s.params_before:>9}->{s.params_after:<9}"
            )
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
    verify: bool = True,
    inputs: Mapping[str, np.ndarray] | None = None,
    n_check: int = 64,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    providers: Sequence[str] = ("cpu",),
    atol: float | None = None,
    rtol: float | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """Merge epsilon-equivalent neurons of every dense chain of ``model``.

    Returns a new model (``model`` is not modified) and a :class:`Report`. With
    ``verify``, both models run in onnxruntime on ``inputs`` (or ``n_check`` seeded
    random inputs) and ``report.verification`` holds the output errors, judged against
    ``atol``/``rtol`` when given.
    """
    options = PartitionOptions(
        float(eps), Equivalence(equivalence), Linkage(linkage), bool(symmetries)
    )
    started = time.perf_counter()
    graph = gs.import_onnx(model)
    scan = scan_graph(graph)
    if not scan.chains:
        raise LumpError(
            "no dense chain found: need two or more Gemm/MatMul(+Add) layers with constant "
            "weights joined by Relu, LeakyRelu, Tanh, Sigmoid or nothing"
        )
    stats, systems, widths_before, widths_after = [], [], [], []
    for index, chain in enumerate(scan.chains):
        system = encode_chain(chain, name=f"chain{index}")
        partition = compute_partition(system, options)
        reduced = reduce_system(system, partition)
        stats += _layer_stats(index, chain, reduced)
        rewrite_chain(graph, chain, reduced)
        systems.append(system)
        widths_before.append(chain.hidden_widths)
        widths_after.append(partition.widths)
        logger.info(
            "chain %d: hidden widths %s -> %s", index, chain.hidden_widths, partition.widths
        )
    metadata = {
        "onnx_lump.version": __version__,
        "onnx_lump.eps": repr(options.eps),
        "onnx_lump.equivalence": options.equivalence.value,
        "onnx_lump.linkage": options.linkage.value,
        "onnx_lump.widths_before": json.dumps(widths_before),
        "onnx_lump.widths_after": json.dumps(widths_after),
    }
    reduced_model = export_model(graph, model, metadata)
    onnx.checker.check_model(reduced_model)
    seconds = time.perf_counter() - started
    report = Report(options, stats, scan.notes, seconds, systems=systems)
    if verify:
        feeds = inputs if inputs is not None else random_inputs(model, n_check, input_shapes)
        report.verification = compare_models(
            model, reduced_model, feeds, resolve_providers(providers), atol, rtol
        )
    return reduced_model, report


def _layer_stats(index: int, chain: DenseChain, reduced: list[ReducedLayer]) -> list[LayerStats]:
    stats = []
    acts = [a.describe() for a in chain.activations] + ["(chain output)"]
    for layer, new, act in zip(chain.layers, reduced, acts, strict=True):
        has_bias = layer.bias_ref is not None or bool(new.bias.any())
        stats.append(
            LayerStats(
                chain=index,
                layer=layer.name,
                activation=act,
                width_before=layer.out_features,
                width_after=new.out_features,
                params_before=layer.n_params,
                params_after=new.weight.size + (new.out_features if has_bias else 0),
            )
        )
    return stats
