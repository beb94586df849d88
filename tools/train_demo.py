"""Train the two demo models shipped in ``models/`` and export them like real users do.

Two MLPs, ``Linear(6,64), act, Linear(64,64), act, Linear(64,6)`` with ``act`` = tanh and
relu, learn the repressilator ("rn") task of ``tools/benchdata.py``: standardised state in,
standardised exact right-hand side out. Training is seeded Adam with early stopping on a
validation split carved from the training set; export uses the TorchScript exporter, so
the graphs hold ``Gemm`` nodes with ``transB=1``. Writes

* ``models/rn_tanh_2x64.onnx``, ``models/rn_relu_2x64.onnx`` (test metrics in
  ``metadata_props`` under ``demo.*``),
* ``models/rn_calib.npz`` with ``{"input": 256 standardised training inputs}`` for
  ``--calib``,
* ``models/README.md`` with a table of the models.

Run from the project root (about 20 s on 2 CPU cores)::

    python -m tools.train_demo [--data ../shared/data] [--out models]

``--data`` is only read by UCI tasks; the demo task is simulated.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.benchdata import DEFAULT_DATA_DIR, Dataset, load_task

TASK = "rn"
HIDDEN = (64, 64)
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
SEED = 0
# Rows are stored trajectory by trajectory, so a contiguous tail of the training rows is a
# validation set of (nearly) whole trajectories: 1600 rows = 8 of rn's 32 trajectories.
VALIDATION_FRACTION = 0.25
BATCH_SIZE = 128
LEARNING_RATE = 3e-3
MAX_EPOCHS = 1500
PATIENCE = 60
CALIBRATION_ROWS = 256
INPUT_NAME, OUTPUT_NAME = "input", "output"
ONNX_TOLERANCE = 1e-5


@dataclass(frozen=True)
class DemoResult:
    path: Path
    activation: str
    parameters: int
    epochs: int
    seconds: float
    test_rmse: float
    test_r2: float


def build_mlp(d_in: int, d_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for hidden in HIDDEN:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - target) ** 2)))


def r2(prediction: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination averaged over outputs (scikit-learn's default)."""
    residual = ((target - prediction) ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1.0 - residual / total))


def train(model: nn.Sequential, data: Dataset) -> int:
    """Fit ``model`` in place, keep the best validation weights; returns epochs run."""
    n_fit = len(data.x_train) - round(VALIDATION_FRACTION * len(data.x_train))
    x_fit = torch.from_numpy(data.x_train[:n_fit])
    y_fit = torch.from_numpy(data.y_train[:n_fit])
    x_val = torch.from_numpy(data.x_train[n_fit:])
    y_val = torch.from_numpy(data.y_train[n_fit:])
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=0.5, patience=PATIENCE // 4
    )
    shuffler = torch.Generator().manual_seed(SEED)
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    epochs_run = 0
    for _ in range(MAX_EPOCHS):
        epochs_run += 1
        model.train()
        for batch in torch.randperm(n_fit, generator=shuffler).split(BATCH_SIZE):
            optimiser.zero_grad()
            loss = nn.functional.mse_loss(model(x_fit[batch]), y_fit[batch])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        scheduler.step(val_loss)
        if val_loss < best_loss:
            best_loss, best_state, stale = (
                val_loss,
                copy.deepcopy(model.state_dict()),
                0,
            )
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    model.load_state_dict(best_state)
    model.eval()
    return epochs_run


def export(model: nn.Sequential, d_in: int, path: Path) -> None:
    example = torch.zeros(1, d_in)
    # The legacy exporter is deprecated but still what most deployed models come from.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
        )


def add_metadata(path: Path, entries: dict[str, str]) -> None:
    model = onnx.load(str(path))
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def architecture(d_in: int, d_out: int, activation: str) -> str:
    widths = [d_in, *HIDDEN, d_out]
    linears = [f"Linear({a},{b})" for a, b in itertools.pairwise(widths)]
    return f", {activation}, ".join(linears)


def train_and_export(data: Dataset, activation: str, out_dir: Path) -> DemoResult:
    d_in, d_out = data.x_train.shape[1], data.y_train.shape[1]
    torch.manual_seed(SEED)
    model = build_mlp(d_in, d_out, activation)
    start = time.perf_counter()
    epochs = train(model, data)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        torch_prediction = model(torch.from_numpy(data.x_test)).numpy()
    test_rmse = rmse(torch_prediction, data.y_test)
    test_r2 = r2(torch_prediction, data.y_test)

    path = out_dir / f"{TASK}_{activation}_{len(HIDDEN)}x{HIDDEN[0]}.onnx"
    export(model, d_in, path)
    add_metadata(
        path,
        {
            "demo.task": TASK,
            "demo.activation": activation,
            "demo.architecture": architecture(d_in, d_out, activation),
            "demo.test_rmse": f"{test_rmse:.6g}",
            "demo.test_r2": f"{test_r2:.6g}",
            "demo.scaling": "inputs and outputs standardised with training mean/std",
            "demo.seed": str(SEED),
            "demo.regenerate": "python -m tools.train_demo",
        },
    )

    onnx_prediction = onnx_predict(path, data.x_test)
    max_diff = float(np.abs(onnx_prediction - torch_prediction).max())
    onnx_rmse = rmse(onnx_prediction, data.y_test)
    if max_diff >= ONNX_TOLERANCE or abs(onnx_rmse - test_rmse) >= ONNX_TOLERANCE:
        raise RuntimeError(
            f"{path}: onnxruntime differs from PyTorch (max |diff| {max_diff:.2e}, "
            f"RMSE {onnx_rmse:.6g} vs {test_rmse:.6g})"
        )
    gemms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    print(
        f"{path.name}: {epochs} epochs in {seconds:.1f} s, test RMSE {test_rmse:.4f}, "
        f"R^2 {test_r2:.4f}; onnxruntime max |diff| {max_diff:.1e}, "
        f"RMSE {onnx_rmse:.4f}, {len(gemms)} Gemm nodes"
    )
    return DemoResult(
        path=path,
        activation=activation,
        parameters=sum(p.numel() for p in model.parameters()),
        epochs=epochs,
        seconds=seconds,
        test_rmse=test_rmse,
        test_r2=test_r2,
    )


def write_calibration(data: Dataset, out_dir: Path) -> Path:
    rows = np.random.default_rng(SEED).choice(len(data.x_train), CALIBRATION_ROWS, replace=False)
    path = out_dir / f"{TASK}_calib.npz"
    np.savez(path, **{INPUT_NAME: data.x_train[np.sort(rows)]})
    return path


def write_readme(results: list[DemoResult], data: Dataset, out_dir: Path) -> None:
    d_in, d_out = data.x_train.shape[1], data.y_train.shape[1]
    lines = [
        "# Demo models",
        "",
        "Generated by `tools/train_demo.py` (seeded; about 20 s on 2 CPU cores).",
        f"Task `{TASK}` (repressilator, `tools/benchdata.py`): input the standardised state",
        "(m1, m2, m3, p1, p2, p3), output the standardised exact right-hand side.",
        f"{len(data.x_train)} training rows (a quarter held out for early stopping),",
        f"{len(data.x_test)} test rows from unseen trajectories. Metrics are on the",
        "standardised test targets; each model also stores them in `metadata_props`",
        "(`demo.*`).",
        "",
        "| file | task | architecture | parameters | test RMSE | test R^2 |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| `{result.path.name}` | {TASK} | "
            f"{architecture(d_in, d_out, result.activation)} | {result.parameters} | "
            f"{result.test_rmse:.4f} | {result.test_r2:.4f} |"
        )
    lines += [
        "",
        f"`{TASK}_calib.npz` holds `{INPUT_NAME}`: {CALIBRATION_ROWS} standardised",
        "training inputs (float32), usable as `--calib` for either model.",
        "",
        "Regenerate with `python -m tools.train_demo [--data ../shared/data] [--out models]`.",
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("models"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_task(TASK, args.data)
    results = [train_and_export(data, name, args.out) for name in ACTIVATIONS]
    calibration = write_calibration(data, args.out)
    write_readme(results, data, args.out)

    print(f"\nSummary (task {TASK}, standardised test targets):")
    for result in results:
        print(
            f"  {result.path}  {result.parameters} parameters  "
            f"RMSE {result.test_rmse:.4f}  R^2 {result.test_r2:.4f}  "
            f"{result.path.stat().st_size} bytes  ({result.seconds:.1f} s training)"
        )
    print(f"  {calibration}  {calibration.stat().st_size} bytes")
    print(f"  {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
