"""What the report keeps of each chain, held on disk where the model lives on disk: its
ODE system's coefficients and the method's result, the same values as shared maps of
the input's own data file where they are its weights as stored, else written to the
call's array file (:class:`~onnx_lump.graph.write.spill.Spill`) and mapped back, so a
model larger than memory is compressed one chain at a time."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnx_lump.graph.read.dense import DenseChain, DenseLayer, same_memory
from onnx_lump.graph.write.spill import Spill
from onnx_lump.ode.encoding import OdeSystem
from onnx_lump.types import ChainResult, ReducedLayer

__all__ = ["keep_on_disk"]


def keep_on_disk(
    spill: Spill, chain: DenseChain, system: OdeSystem, result: ChainResult
) -> tuple[OdeSystem, ChainResult]:
    """The system and result as the report keeps them: the same values, held on disk.
    Call before the chain is rewritten (a weight rewritten in place is no longer the
    input's data)."""
    coefficients = []
    for layer, ode_layer in zip(chain.layers, system.layers, strict=True):
        stored, weight = layer.held
        own = ode_layer.made_from(stored) or ode_layer.made_from(weight)
        view = layer.weight_view() if own else None  # one shared map per data file
        coefficients.append(ode_layer.values if view is None else view)
    missing = [i for i, c in enumerate(coefficients) if not isinstance(c, np.memmap)]
    parked = spill.park([coefficients[i] for i in missing])
    for index, array in zip(missing, parked, strict=True):
        coefficients[index] = array
    system = dataclasses.replace(
        system,
        layers=tuple(
            layer.held_as(c) for layer, c in zip(system.layers, coefficients, strict=True)
        ),
    )
    # A layer the method left as it was is its stored weight, a map of the input's
    # file: kept as a shared map of it, not copied (a wide chain whose layers all
    # stay would otherwise be read whole into the array file, and into memory).
    weights = [
        _own_view(layer, new.weight) if isinstance(new, ReducedLayer) else None
        for layer, new in zip(chain.layers, result.layers, strict=True)
    ]
    missing = [i for i, w in enumerate(weights) if w is None]
    parked_weights = iter(spill.park([result.layers[i].weight for i in missing]))
    kept_weights = [w if w is not None else next(parked_weights) for w in weights]
    shortcut_weights = spill.park([s.weight for s in result.shortcuts])
    result = dataclasses.replace(
        result,
        layers=[
            dataclasses.replace(layer, weight=w) if isinstance(layer, ReducedLayer) else layer
            for layer, w in zip(result.layers, kept_weights, strict=True)
        ],
        shortcuts=[
            dataclasses.replace(s, weight=w)
            for s, w in zip(result.shortcuts, shortcut_weights, strict=True)
        ],
        notes=list(result.notes),
    )
    return system, result


def _own_view(layer: DenseLayer, weight: np.ndarray) -> np.ndarray | None:
    """A shared map of ``layer``'s stored weight when ``weight`` is that stored weight
    itself (the same memory), else None."""
    stored, _ = layer.held
    if stored is None or not same_memory(weight, stored):
        return None
    return layer.weight_view()
