"""Planting redundant neurons into canonical layers ``(W, b)``, and the :class:`Fixture`
record every fixture builder returns (see the package docstring for the planted kinds)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx

__all__ = [
    "ALLOWED_KINDS",
    "Fixture",
    "Plant",
    "dup",
    "flip",
    "outgoing_weights",
    "plant_net",
    "plant_rows",
    "prop",
    "random_net",
    "zero",
]

# Which planted kinds keep the network function unchanged after a merge.
ALLOWED_KINDS = {
    "Relu": {"duplicate", "proportional", "zero_row"},
    "LeakyRelu": {"duplicate", "proportional", "zero_row"},
    "Tanh": {"duplicate", "sign_flip", "zero_row"},
    "Sigmoid": {"duplicate", "sign_flip", "zero_row"},
    "Softplus": {"duplicate", "zero_row"},
    "Sin": {"duplicate", "zero_row"},
}


@dataclass(frozen=True)
class Plant:
    """One planted neuron: W[neuron] = scale * W[of] (see the package docstring)."""

    layer: int
    kind: str
    neuron: int
    of: int | None
    scale: float
    expect_merged: bool = True


def dup(layer, neuron, of, keep=False):
    return Plant(layer, "duplicate", neuron, of, 1.0, not keep)


def prop(layer, neuron, of, scale, keep=False):
    return Plant(layer, "proportional", neuron, of, scale, not keep)


def flip(layer, neuron, of, keep=False):
    return Plant(layer, "sign_flip", neuron, of, -1.0, not keep)


def zero(layer, neuron, keep=False):
    return Plant(layer, "zero_row", neuron, None, 0.0, not keep)


def outgoing_weights(rng, n):
    """Random weights with |w| in [0.5, 1.5]: never (near) zero."""
    return rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.5, 1.5, size=n)


def plant_rows(rng, w_in, biases, w_outs, plants, activation):
    """Plant ``plants`` into one hidden layer, in place.

    ``w_in`` is (out x in); ``biases`` are the (out,) bias vectors feeding the
    layer (several when branches share ``w_in``); ``w_outs`` are the next
    layers' (next x out) matrices whose columns are the outgoing weights.
    """
    planted = {p.neuron for p in plants}
    for p in plants:
        assert p.kind in ALLOWED_KINDS[activation], (p, activation)
        # A copy of a planted neuron would make expected widths ambiguous.
        assert p.of not in planted, p
        if p.kind == "zero_row":
            w_in[p.neuron] = 0  # bias kept: the neuron outputs act(b[k])
        else:
            w_in[p.neuron] = p.scale * w_in[p.of]
            for b in biases:
                b[p.neuron] = p.scale * b[p.of]
        for w_out in w_outs:
            w_out[:, p.neuron] = outgoing_weights(rng, w_out.shape[0])


def plant_net(rng, net, plants, activations):
    """Plant into every hidden layer of a single chain ``net = [(W, b), ...]``.

    Layers are planted in order: planting hidden layer L rewrites columns of
    dense layer L+1 before its own rows are copied, so a copied row of layer
    L+1 also copies the columns of the planted layer-L neurons.
    """
    if isinstance(activations, str):
        activations = [activations] * (len(net) - 1)
    for layer, activation in enumerate(activations):
        (w, b), (w_next, _) = net[layer], net[layer + 1]
        mine = [p for p in plants if p.layer == layer]
        plant_rows(rng, w, [] if b is None else [b], [w_next], mine, activation)


def random_net(rng, widths, dtype=np.float32, bias=True):
    """Gaussian canonical layers for widths [in, h1, ..., out]."""
    return [
        (
            rng.normal(size=(n_out, n_in)).astype(dtype),
            rng.normal(size=n_out).astype(dtype) if bias else None,
        )
        for n_in, n_out in itertools.pairwise(widths)
    ]


@dataclass
class Fixture:
    model: onnx.ModelProto
    source: str
    activation: str
    hidden_widths: list[int]
    plants: list[Plant]
    notes: str
    # Hidden-layer indices per mergeable chain; default: one chain, all layers.
    chain_layers: list[list[int]] = field(default_factory=list)
