"""Canonical expressions let the graph reader recognise decomposed activations.

Exporters write the same activation as many different subgraphs, so matching node shapes
directly would miss most of them. Folding a subgraph into one canonical expression
(products and sums flattened with their constants folded; ``Div``/``Sub``/``Neg``/``Pow``/
``Sqrt``/``Reciprocal`` rewritten as products, sums and powers) makes operand order,
association and ``Div(x, sqrt 2)`` versus ``Mul(x, 1/sqrt 2)`` irrelevant. This module is
pure algebra on tuples, free of numpy and of the registry, so both the graph reader and
the matchers can build on it without depending on each other.
"""

from __future__ import annotations

import math

__all__ = [
    "X",
    "Y",
    "add",
    "constant",
    "factors_of",
    "fn",
    "mentions",
    "mul",
    "power",
    "render",
    "swapped",
    "terms_of",
]


# -- canonical expressions -------------------------------------------------------------
#
# ("x",)                         the pre-activation
# ("y",)                         a second dense layer's output (the up branch of a gated FFN)
# ("const", v)                   a scalar
# ("mul", coef, factors)         coef * prod(factors), factors sorted, never a const
# ("add", offset, terms)         offset + sum(terms), terms sorted, never a const
# ("pow", exponent, base)        base ** exponent (non-integer or negative exponents)
# ("fn", op, params, arg)        a unary op with its float/str parameters
# ("cmp", op, arg, value)        arg > value ("gt"), >= ("ge"), < ("lt"), <= ("le")
# ("where", cond, a, b)

X = ("x",)
Y = ("y",)


def constant(value: float) -> tuple:
    return ("const", float(value))


def _is_const(e: tuple) -> bool:
    return e[0] == "const"


def _sort_key(e: tuple) -> str:
    return repr(e)


def mul(*args: tuple) -> tuple:
    coef, factors = 1.0, []
    for a in args:
        if a[0] == "const":
            coef *= a[1]
        elif a[0] == "mul":
            coef *= a[1]
            factors.extend(a[2])
        else:
            factors.append(a)
    if coef == 0.0 or not factors:
        return constant(coef)
    if coef == 1.0 and len(factors) == 1:
        return factors[0]
    return ("mul", coef, tuple(sorted(factors, key=_sort_key)))


def add(*args: tuple) -> tuple:
    offset, terms = 0.0, []
    for a in args:
        if a[0] == "const":
            offset += a[1]
        elif a[0] == "add":
            offset += a[1]
            terms.extend(a[2])
        else:
            terms.append(a)
    if not terms:
        return constant(offset)
    if offset == 0.0 and len(terms) == 1:
        return terms[0]
    return ("add", offset, tuple(sorted(terms, key=_sort_key)))


def power(base: tuple, exponent: float) -> tuple:
    if _is_const(base):
        return constant(base[1] ** exponent)
    if exponent == 1.0:
        return base
    if exponent in (2.0, 3.0, 4.0):
        return mul(*([base] * int(exponent)))
    if exponent == -1.0:
        # 1 / (1 + exp(-e)) is Sigmoid(e); 1 / (1 + |x|) stays a power.
        offset, terms = terms_of(base)
        if offset == 1.0 and len(terms) == 1 and terms[0][:2] == ("fn", "Exp"):
            return fn("Sigmoid", mul(constant(-1.0), terms[0][3]))
    return ("pow", float(exponent), base)


def fn(op: str, arg: tuple, **params) -> tuple:
    if op == "Log":
        # log(1 + exp(e)) is Softplus(e): the ONNX function body of Softplus.
        offset, terms = terms_of(arg)
        if offset == 1.0 and len(terms) == 1 and terms[0][:2] == ("fn", "Exp"):
            return fn("Softplus", terms[0][3])
    if op == "Relu":
        return ("fn", "Relu", (), arg)
    if op == "Clip":
        low, high = params.get("low", -math.inf), params.get("high", math.inf)
        if arg[:2] == ("fn", "Relu"):
            low, arg = max(low, 0.0), arg[3]
        elif arg[:2] == ("fn", "Clip"):
            inner = dict(arg[2])
            low, high = max(low, inner["low"]), min(high, inner["high"])
            arg = arg[3]
        low = min(low, high)  # Min(Max(x, a), b) with a > b is the constant b
        if low == -math.inf and high == math.inf:
            return arg
        if low == 0.0 and high == math.inf:
            return ("fn", "Relu", (), arg)
        params = {"low": low, "high": high}
    return ("fn", op, tuple(sorted(params.items())), arg)


def factors_of(e: tuple) -> tuple[float, tuple]:
    if e[0] == "mul":
        return e[1], e[2]
    return 1.0, (e,)


def terms_of(e: tuple) -> tuple[float, tuple]:
    if e[0] == "add":
        return e[1], e[2]
    return 0.0, (e,)


def mentions(expr: tuple, variable: tuple) -> bool:
    """Whether ``variable`` (X or Y) occurs in ``expr``."""
    # operands sit directly in the tuple or in a tuple of factors/terms: search every level
    return expr == variable or any(
        isinstance(part, tuple) and mentions(part, variable) for part in expr
    )


def swapped(expr: tuple) -> tuple:
    """``expr`` with X and Y exchanged, canonical again (the sort order of products and
    sums depends on the names): a gate read second is then the activation's x."""
    head = expr[0]
    if head in ("x", "y"):
        return Y if head == "x" else X
    if head == "const":
        return expr
    if head == "mul":
        return mul(constant(expr[1]), *(swapped(f) for f in expr[2]))
    if head == "add":
        return add(constant(expr[1]), *(swapped(t) for t in expr[2]))
    if head == "pow":
        return power(swapped(expr[2]), expr[1])
    if head == "fn":
        return (head, expr[1], expr[2], swapped(expr[3]))
    if head == "cmp":
        return (head, expr[1], swapped(expr[2]), expr[3])
    return (head, *(swapped(part) for part in expr[1:]))  # where


def render(expr: tuple) -> str:
    """A short human-readable form of a canonical expression, for notes."""
    head = expr[0]
    if head in ("x", "y"):
        return head
    if head == "const":
        return f"{expr[1]:.6g}"
    if head == "mul":
        parts = [render(f) for f in expr[2]]
        if expr[1] != 1.0:
            parts.insert(0, f"{expr[1]:.6g}")
        return " * ".join(p if " + " not in p else f"({p})" for p in parts)
    if head == "add":
        parts = [render(t) for t in expr[2]]
        if expr[1] != 0.0:
            parts.append(f"{expr[1]:.6g}")
        return " + ".join(parts)
    if head == "pow":
        return f"({render(expr[2])})^{expr[1]:g}"
    if head == "cmp":
        symbol = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[expr[1]]
        return f"{render(expr[2])} {symbol} {expr[3]:.6g}"
    if head == "where":
        return f"Where({render(expr[1])}, {render(expr[2])}, {render(expr[3])})"
    params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in expr[2])
    return f"{expr[1]}({render(expr[3])}{', ' + params if params else ''})"
