"""Stage 2: the ODE encoding of a dense chain.

As in the paper and the ERODE tool, every input feature is a variable with derivative 0
(its initial value is the input) and every neuron is a variable whose derivative is its
activation applied to an affine form of the previous layer's variables::

    x_j' = 0                      x_j(0) = input j
    h_i' = sigma_i(sum_j W_ij a_j + b_i)

For identity activations this is literally a polynomial (linear) ODE and can be exported
in ERODE's ``.ode`` syntax. Equivalences are computed on this object, through
:func:`aggregate`, which substitutes upstream variables by their blocks.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from onnx_lump.activations import Activation, ActivationKind
from onnx_lump.errors import LumpError
from onnx_lump.graph.read.dense import DenseChain

__all__ = [
    "Lumping",
    "OdeLayer",
    "OdeSystem",
    "aggregate",
    "canonical_rows",
    "encode_chain",
    "row_step",
]


@dataclass(frozen=True, eq=False)
class OdeLayer:
    """The right-hand sides of one layer's variables: ``sigma(coefficients @ a_prev + bias)``.

    ``values`` holds the coefficients as the model stores them (float32 for a float32
    model: the data-free partition and reduction read them there, accumulating in
    float64); ``coefficients`` is the same matrix in float64, made on first use and kept
    (``values`` itself when it already is float64). Once made, it replaces ``values``
    too, so a layer is never held twice.
    """

    variables: tuple[str, ...]
    values: np.ndarray  # (n, n_prev): row i holds the coefficients of variable i
    bias: np.ndarray  # (n,)
    activation: Activation

    @functools.cached_property
    def coefficients(self) -> np.ndarray:
        stored = self.values
        if stored.dtype == np.float64:
            return stored
        coefficients = np.array(stored, dtype=np.float64)
        object.__setattr__(self, "values", coefficients)
        self.__dict__["_made_from"] = id(stored)
        return coefficients

    def made_from(self, array: np.ndarray | None) -> bool:
        """Whether the layer's values are ``array``, or were converted from it (compared
        by identity: ``array`` must be alive, as the chain's stored weight is)."""
        if array is None:
            return False
        return self.values is array or self.__dict__.get("_made_from") == id(array)

    @property
    def size(self) -> int:
        return len(self.variables)

    def held_as(self, values: np.ndarray) -> OdeLayer:
        """This layer with ``values`` (equal to its own, e.g. a memory map of a file) as
        both its values and its coefficients, in their dtype: what a report of a model
        on disk keeps, where a float64 copy would bring the layer into memory at twice
        its stored size."""
        layer = dataclasses.replace(self, values=values)
        layer.__dict__["coefficients"] = values  # what the cached property would hold
        return layer


@dataclass(frozen=True, eq=False)
class OdeSystem:
    """Input variables (derivative 0) followed by layers of neuron variables.

    The last layer holds the chain's outputs; its activation is the identity because
    whatever follows the chain in the graph is not part of it.
    """

    name: str
    inputs: tuple[str, ...]
    layers: tuple[OdeLayer, ...]
    precision: float = float(np.finfo(np.float32).eps)  # relative precision of the weights

    @property
    def hidden(self) -> tuple[OdeLayer, ...]:
        return self.layers[:-1]

    @property
    def n_variables(self) -> int:
        return len(self.inputs) + sum(layer.size for layer in self.layers)

    def upstream_names(self, index: int) -> tuple[str, ...]:
        return self.inputs if index == 0 else self.layers[index - 1].variables

    def to_text(self, precision: int = 6) -> str:
        """Human-readable right-hand sides, one variable per line."""
        lines = [
            f"# ODE encoding of {self.name}: {len(self.inputs)} inputs, "
            f"{' + '.join(str(layer.size) for layer in self.layers)} neurons",
            *(f"{x}' = 0    # {x}(0) = input feature {j}" for j, x in enumerate(self.inputs)),
        ]
        for index, layer in enumerate(self.layers):
            names = self.upstream_names(index)
            for var, row, b in zip(layer.variables, layer.coefficients, layer.bias, strict=True):
                affine = _affine(row, b, names, precision)
                act = layer.activation
                rhs = (
                    affine if act.kind is ActivationKind.IDENTITY else f"{act.describe()}({affine})"
                )
                lines.append(f"{var}' = {rhs}")
        return "\n".join(lines) + "\n"

    def to_erode(self, precision: int = 9) -> str:
        """The system in ERODE's ``.ode`` syntax; only polynomial right-hand sides qualify."""
        for index, layer in enumerate(self.layers):
            if not layer.activation.is_polynomial:
                raise LumpError(
                    f"ERODE export needs polynomial right-hand sides, but layer {index + 1} of "
                    f"{self.name} uses {layer.activation.describe()}; dump it as text instead"
                )
        ident = "".join(c if c.isalnum() else "_" for c in self.name)
        lines = [f"begin model {ident}", " begin init"]
        lines += [f"  {x} = 0" for x in self.inputs]
        lines += [f"  {v} = 0" for layer in self.layers for v in layer.variables]
        lines += [" end init", " begin ODE"]
        lines += [f"  d({x}) = 0" for x in self.inputs]
        for index, layer in enumerate(self.layers):
            names = self.upstream_names(index)
            for var, row, b in zip(layer.variables, layer.coefficients, layer.bias, strict=True):
                lines.append(f"  d({var}) = {_affine(row, b, names, precision)}")
        lines += [" end ODE", "end model"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class Lumping:
    """How one layer's variables are expressed through block variables.

    Variable j equals ``scale[j] * y[block[j]] + offset[j]``; ``block[j] == -1`` marks a
    constant variable (``scale`` 0, value ``offset``) that is folded into the next bias.
    ``representative``, when set, names the member of each block that is kept as it is
    (scale 1, offset 0) instead of the block's mean.
    """

    block: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    n_blocks: int
    representative: np.ndarray | None = None

    @classmethod
    def identity(cls, size: int) -> Lumping:
        return cls(np.arange(size), np.ones(size), np.zeros(size), size)

    @property
    def size(self) -> int:
        return len(self.block)

    def members(self) -> list[np.ndarray]:
        """Indices of the variables of each block, in block order."""
        kept = np.flatnonzero(self.block >= 0)
        order = kept[np.argsort(self.block[kept], kind="stable")]
        cuts = np.flatnonzero(np.diff(self.block[order])) + 1
        return np.split(order, cuts)


def aggregate(
    layer: OdeLayer, upstream: Lumping, *, stored: bool = False, final: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The layer's coefficients over upstream blocks, and its bias with constants folded in.

    Substituting ``a_j = s_j y_B + c_j`` gives coefficient ``sum_{j in B} W_ij s_j`` on
    block B and bias ``b_i + sum_j W_ij c_j``. When the upstream lumping is the identity
    the layer's own arrays come back, as read-only views: a wide layer is not copied.

    With ``stored``, the layer's ``values`` are read (summed in float64) and the
    coefficients come back in their dtype, rounded once as writing them into the model
    would round them, unless the upstream blocks are at most half as many as their
    members: then float64 costs no more memory than the layer itself, and a merge in
    this layer is not rounded twice (the bias stays float64). With ``final`` (no merge
    follows in this layer: the chain's output layer) they stay in their dtype, rounded
    once, as the model will store them.
    """
    coefficients = layer.values if stored else layer.coefficients
    dtype = coefficients.dtype
    if 2 * upstream.n_blocks <= upstream.size and not (stored and final):
        dtype = np.dtype(np.float64)
    if upstream.n_blocks == upstream.size and np.array_equal(
        upstream.block, np.arange(upstream.size)
    ):
        if np.all(upstream.scale == 1.0):
            aggregated = _read_only(coefficients)
        else:  # no block has two members
            aggregated = np.empty(coefficients.shape, dtype=coefficients.dtype)
            np.multiply(coefficients, upstream.scale, out=aggregated, casting="same_kind")
    else:
        aggregated = _sum_columns_by_block(coefficients, upstream, dtype)
    if upstream.offset.any():
        bias = layer.bias + _matvec(coefficients, upstream.offset)
    else:
        bias = _read_only(layer.bias)
    return aggregated, bias


# Rows of a wide layer are processed this many entries at a time, so that the gathered
# copy stays in cache instead of becoming a second full-size matrix.
_CHUNK_ENTRIES = 1 << 16


def row_step(width: int) -> int:
    """How many rows of this width to process at a time."""
    return max(1, _CHUNK_ENTRIES // max(width, 1))


def _sum_columns_by_block(
    coefficients: np.ndarray, upstream: Lumping, dtype: np.dtype
) -> np.ndarray:
    """``coefficients @ M`` for the sparse (members x blocks) matrix M of the upstream
    scales, summed in float64 and stored in ``dtype``: a few rows at a time, transposed
    so that each block's sum runs over contiguous memory (scipy's CSR product), which is
    several times faster on a wide layer than gathering the columns and summing their
    runs."""
    kept = np.flatnonzero(upstream.block >= 0)
    n = coefficients.shape[0]
    membership = sp.csr_matrix(
        (upstream.scale[kept].astype(np.float64), (upstream.block[kept], kept)),
        shape=(upstream.n_blocks, upstream.size),
    )
    out = np.empty((n, upstream.n_blocks), dtype=dtype)
    step = row_step(upstream.size)
    for start in range(0, n, step):
        rows = np.ascontiguousarray(coefficients[start : start + step].T, dtype=np.float64)
        out[start : start + step] = (membership @ rows).T
    return out


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in float64 without a float64 copy of a narrower matrix."""
    if matrix.dtype == np.float64:
        return matrix @ vector
    out = np.empty(matrix.shape[0])
    step = row_step(matrix.shape[1])
    for start in range(0, matrix.shape[0], step):
        out[start : start + step] = matrix[start : start + step].astype(np.float64) @ vector
    return out


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def canonical_rows(
    coefficients: np.ndarray, bias: np.ndarray, lumping: Lumping, activation: Activation
) -> np.ndarray:
    """Rows ``r_j = [coefficients_j, bias_j]`` rewritten so that variable j equals
    ``scale_j * sigma(r_j . [y, 1]) + offset_j``; equal canonical rows mean equal dynamics.

    The offset sits outside sigma (the Sigmoid flip 1 - sigma(-z)), except for the
    identity, where it is the bias itself. Rows of constant variables are zero.
    """
    inner = lumping.offset if activation.kind is ActivationKind.IDENTITY else 0.0
    kept = lumping.block >= 0
    divisor = np.where(kept, lumping.scale, np.inf)[:, None]  # constants become zero rows
    rows = np.empty((coefficients.shape[0], coefficients.shape[1] + 1))
    np.divide(coefficients, divisor, out=rows[:, :-1])
    np.divide((bias - inner)[:, None], divisor, out=rows[:, -1:])
    return rows


def encode_chain(chain: DenseChain, name: str = "chain") -> OdeSystem:
    """One variable per input feature and per neuron of ``chain``."""
    inputs = tuple(f"x{j}" for j in range(chain.layers[0].in_features))
    activations = [*chain.activations, Activation(ActivationKind.IDENTITY)]
    layers = []
    last = len(chain.layers) - 1
    for index, (layer, act) in enumerate(zip(chain.layers, activations, strict=True)):
        prefix = "y" if index == last else f"h{index + 1}_"
        variables = tuple(f"{prefix}{i}" for i in range(layer.out_features))
        layers.append(OdeLayer(variables, layer.stored_weight(), layer.bias, act))
    precision = float(np.finfo(chain.layers[0].dtype).eps)
    return OdeSystem(name, inputs, tuple(layers), precision)


def _affine(row: np.ndarray, bias: float, names: tuple[str, ...], precision: int) -> str:
    terms = [f"{c:.{precision}g}*{n}" for c, n in zip(row, names, strict=True) if c != 0.0]
    if bias != 0.0 or not terms:
        terms.append(f"{bias:.{precision}g}")
    return " + ".join(terms).replace("+ -", "- ")
