"""Generate the classifier test fixtures ``tests/fixtures/skl_clf_*``: scikit-learn
classifiers as skl2onnx exports them, with calibration data.

Run from the repository root (a few seconds; needs scikit-learn and skl2onnx)::

    python -m tools.make_classifier_fixtures [--out tests/fixtures]

``MLPClassifier(hidden_layer_sizes=(32, 16), random_state=0)`` trained on scikit-learn's
bundled ``load_digits`` (64 features, 10 classes) and ``load_breast_cancer`` (30 features,
2 classes; standardized first, so that the MLP learns), exported by
``skl2onnx.to_onnx(clf, X[:1])``:

* ``skl_clf_digits_zipmap.onnx``, ``skl_clf_cancer_zipmap.onnx``: the default options, so
  the model has two outputs: ``output_label`` (int64, one per row) and
  ``output_probability``, a ZipMap: a sequence of maps {class: probability}, not a tensor;
* ``skl_clf_digits_tensor.onnx``: ``options={"zipmap": False}``: ``label`` (int64) and
  ``probabilities`` (float32, rows x 10), two tensors of different kinds.

``skl_clf_digits_calib.npz`` and ``skl_clf_cancer_calib.npz`` hold ``X`` (float32): a
seeded subset of the rows (:data:`CALIB_ROWS`) for ``--calib``. Deterministic for given
scikit-learn and skl2onnx versions.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import onnx
import skl2onnx
import sklearn
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.neural_network import MLPClassifier

__all__ = ["CALIB_ROWS", "main", "train"]

CALIB_ROWS = 500  # per data set: 100 held out at the default 20%


def train(name: str) -> tuple[MLPClassifier, np.ndarray]:
    """The classifier and its float32 features (all rows)."""
    if name == "digits":
        x, y = load_digits(return_X_y=True)
    else:
        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 300 steps: fine for a fixture
        clf.fit(x, y)
    return clf, x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, short in (("digits", "digits"), ("breast_cancer", "cancer")):
        clf, x = train(name)
        variants = {"zipmap": None}
        if short == "digits":
            variants["tensor"] = {"zipmap": False}
        for variant, options in variants.items():
            model = skl2onnx.to_onnx(clf, x[:1], options=options, target_opset=17)
            model.doc_string = (
                f"MLPClassifier(32, 16) on sklearn {name} (sklearn {sklearn.__version__}, "
                f"skl2onnx {skl2onnx.__version__}); options {options}"
            )
            onnx.save(model, out / f"skl_clf_{short}_{variant}.onnx")
        rows = np.sort(np.random.default_rng(0).permutation(len(x))[:CALIB_ROWS])
        np.savez_compressed(out / f"skl_clf_{short}_calib.npz", X=x[rows])
    print(f"wrote the classifier fixtures to {out}")


if __name__ == "__main__":
    main()
