"""Where a size search starts: the width share a target implies, the knob at which the
first hidden layer keeps it (``search.hints.knob_hint``), and the float32 pieces of the data path
that make each step cheaper."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import MODELS

from onnx_lump.activations import REGISTRY, Activation
from onnx_lump.api import compress
from onnx_lump.data.cache import SearchCache
from onnx_lump.methods import Lump
from onnx_lump.methods.layer_lumping import eps_for_width
from onnx_lump.ode.partition import Equivalence, PartitionOptions, Similarity
from onnx_lump.search import Evaluator, bisect
from onnx_lump.search.hints import knob_hint, uniform_width_share, width_ratios

DEMO = MODELS / "rn_tanh_2x64.onnx"
CALIB = dict(np.load(MODELS / "rn_calib.npz"))


def _chain(*dims: int) -> SimpleNamespace:
    """A chain of dense layers with biases through ``dims`` (input, hidden..., output)."""
    layers = [
        SimpleNamespace(in_features=a, out_features=b, n_params=a * b + b)
        for a, b in itertools.pairwise(dims)
    ]
    return SimpleNamespace(layers=layers)


def _params(dims: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(dims))


@pytest.mark.parametrize("dims", [(64, 4096, 4096, 4096, 4096, 1), (20, 300, 7), (5, 40, 30, 3)])
@pytest.mark.parametrize("target", [0.02, 0.05, 0.3, 0.9])
def test_the_width_share_keeps_the_target_when_every_layer_keeps_it(dims, target):
    share = uniform_width_share([_chain(*dims)], target)
    kept = (dims[0], *(share * w for w in dims[1:-1]), dims[-1])
    assert _params(kept) == pytest.approx(target * _params(dims), rel=1e-9)


def test_the_width_share_is_clamped_to_what_widths_can_do():
    chains = [_chain(10, 50, 50, 2)]
    assert uniform_width_share(chains, 1.5) == 1.0
    assert uniform_width_share(chains, 1e-9) == 0.0  # below the output biases alone


def _width(knee: float):
    calls = []

    def width(eps: float) -> int:
        calls.append(eps)
        return max(1, round(1000 / (1.0 + (eps / knee) ** 2)))

    return width, calls


@pytest.mark.parametrize("knee", [1e-9, 3e-5, 0.2, 50.0])
@pytest.mark.parametrize("want", [1, 200, 999])
def test_eps_for_width_finds_the_smallest_eps_within_its_resolution(knee, want):
    width, calls = _width(knee)
    eps = eps_for_width(width, want)
    # the width asked for exactly, or the smallest eps to the resolution (1e-6)
    assert width(eps) <= want and (width(eps) == want or want < width(eps / (1 + 2e-6)))
    assert len(calls) <= 40  # bracketing by 16x, then a bisection in log eps


@pytest.mark.parametrize("knee", [3e-5, 0.2])
def test_a_rough_eps_for_width_stops_within_its_slack(knee):
    exact_width, exact_calls = _width(knee)
    exact = eps_for_width(exact_width, 600)
    width, calls = _width(knee)
    rough = eps_for_width(width, 600, slack=10)
    assert 590 <= width(rough) <= 600 and rough >= exact
    assert len(calls) - 1 <= len(exact_calls)  # never more (less the check above)


def test_eps_for_width_says_none_when_no_eps_gets_there():
    assert eps_for_width(lambda eps: 10, 5) is None
    assert eps_for_width(lambda eps: 1, 5) == 0.0  # every eps does: knob 0 may too


def test_the_hint_is_where_the_first_layer_keeps_the_share():
    model = onnx.load(DEMO)
    method = Lump(PartitionOptions(0.0, similarity=Similarity.DATA))
    cache = SearchCache()
    hint = knob_hint(model, method, 0.3, CALIB, cache)
    assert hint is not None and hint > 0
    want = round(uniform_width_share_for(model, 0.3) * 64)

    def first_width(eps: float) -> int:
        options = PartitionOptions(eps, similarity=Similarity.DATA)
        _, report = compress(
            model, Lump(options), calibration=CALIB, refine=False, verify=False, cache=cache
        )
        return report.layers[0].width_after

    width = first_width(hint)
    assert width <= want and (width >= want - 1 or want < first_width(hint / (1 + 2e-4)))


def uniform_width_share_for(model: onnx.ModelProto, target: float, after=None) -> float:
    chains = _chains(model)
    ratios = None if after is None else width_ratios(after, chains)
    return uniform_width_share(chains, target, ratios)


def test_the_retry_hint_follows_the_later_layers_of_a_step():
    """Given a step's report, the hint is where the first layer keeps the share that
    meets the target when the second keeps, relative to it, what it kept in that step:
    here the second layer kept relatively more, so the first must keep fewer."""
    model = onnx.load(DEMO)
    method = Lump(PartitionOptions(0.0, similarity=Similarity.DATA))
    cache = SearchCache()
    first = knob_hint(model, method, 0.3, CALIB, cache)

    def step(eps: float):
        options = PartitionOptions(eps, similarity=Similarity.DATA)
        return compress(
            model, Lump(options), calibration=CALIB, refine=False, verify=False, cache=cache
        )[1]

    after = step(first)
    (ratios,) = width_ratios(after, _chains(model))
    retry = knob_hint(model, method, 0.3, CALIB, cache, after=after)
    want = round(uniform_width_share_for(model, 0.3, after) * 64)
    assert ratios[1] > 1.0 and want < round(uniform_width_share_for(model, 0.3) * 64)
    assert step(retry).layers[0].width_after == want


def _chains(model: onnx.ModelProto):
    from onnx_lump.graph.read.chains import scan_graph
    from onnx_lump.graph.write.importer import import_graph

    return scan_graph(import_graph(model)).chains


def test_no_hint_for_methods_without_a_cheap_one():
    model = onnx.load(DEMO)
    forward = Lump(PartitionOptions(0.0, Equivalence.FORWARD, similarity=Similarity.DATA))
    assert knob_hint(model, forward, 0.3, CALIB, SearchCache()) is None


def test_a_hinted_search_meets_the_target_without_bracketing_from_1():
    evaluate = Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA)),
        CALIB,
        refine=False,
    )
    _knob, point, met = bisect(evaluate, None, target_params=0.3)
    # within 10% below: the sizes jump from 30.2% to 27.4-28.0% between eps 0.485 and 0.49
    assert met and 0.3 * (1 - 0.1) <= point.retained <= 0.3
    assert 1.0 not in evaluate.cache  # started from the hint, not from doubling 1

    plain = Evaluator(
        onnx.load(DEMO),
        lambda eps: Lump(PartitionOptions(eps, similarity=Similarity.DATA)),
        CALIB,
        refine=False,
    )
    plain.hint = lambda target, **_: None
    _, plain_point, plain_met = bisect(plain, None, target_params=0.3)
    # both stop within one neuron a layer of the target (31 parameters here)
    assert plain_met and abs(plain_point.retained - point.retained) <= 0.05 * 0.3


@pytest.mark.parametrize("kind", sorted(REGISTRY, key=lambda k: k.value))
def test_float32_activations_agree_with_float64(kind):
    activation = Activation(kind)
    z = np.concatenate([np.linspace(-12, 12, 2001), [-200.0, -90.0, 90.0, 200.0]])
    value = activation.float32(z.astype(np.float32))
    assert value.dtype == np.float32
    expected = activation(z.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(value, expected, rtol=2e-6, atol=2e-6)


def test_a_model_on_disk_gets_the_same_hint(tmp_path):
    """Weights kept in external data are read a chain at a time for the hint, which is
    the one the model in memory gets."""
    from onnx_lump.graph.io.load import load_model
    from onnx_lump.graph.write.spill import Spill

    model = onnx.load(DEMO)
    path = tmp_path / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, size_threshold=0)
    on_disk = load_model(path).model
    assert Spill.for_model(on_disk) is not None
    method = Lump(PartitionOptions(0.0, similarity=Similarity.DATA))
    in_memory = knob_hint(model, method, 0.3, CALIB, SearchCache())
    assert knob_hint(on_disk, method, 0.3, CALIB, SearchCache()) == in_memory
