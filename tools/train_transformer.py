"""Train the small transformer of the benchmark's transformer task and export it to ONNX.

A character-level language model over the Python standard library's own source text:
token embedding + learned positions, two pre-norm ``nn.TransformerEncoderLayer`` blocks
(d_model 128, 4 heads, FFN 512, GELU, causal mask), a final LayerNorm and a linear head
over 128 byte values (characters outside ASCII become token 0). Training and held-out
text are split **by file**: :data:`TRAIN_FILES` train, :data:`HELDOUT_FILES` are only read
for the held-out numbers. Seeds are fixed; torch uses two threads (the machine is shared).

Writes, under ``--out`` (default ``tools/cache/transformer/``, gitignored):

* ``charlm_2x128.onnx``: dynamo export (opset 20, one ``Gelu`` op per FFN), input
  ``tokens`` int64 (batch, seq) with both axes dynamic (seq <= 64), output ``logits``
  float32 (batch, seq, 128);
* ``charlm_2x128_ts.onnx``: the same weights through the TorchScript exporter (opset 17,
  where GELU is written as the decomposed ``Div -> Erf -> Add -> Mul -> Mul`` form);
* ``calib.npz``: ``tokens`` (256 windows of 64 characters from the training files only),
  usable as ``--calib``;
* ``heldout.npz``: ``tokens`` and ``next_chars`` (512 windows from the held-out files);
* ``meta.json``: loss and accuracy on both splits (torch and onnxruntime), timings, files.

Run from the project root (about 4.5 minutes on 2 idle CPU cores: 0.37 s a step; the
committed run took 34 minutes on cores shared with other jobs)::

    python -m tools.train_transformer [--out DIR] [--steps 700] [--models models]

``models/charlm_2x128.onnx`` and ``models/charlm_calib.npz`` are copies made by ``--models``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from tools.torch_export import export_onnx

__all__ = [
    "HELDOUT_FILES",
    "TRAIN_FILES",
    "CharLM",
    "cross_entropy",
    "encode_text",
    "load_split",
    "main",
]

VOCAB = 128
D_MODEL, N_HEADS, D_FFN, N_LAYERS = 128, 4, 512, 2
TRAIN_LEN = 64  # window length for training, calibration and held-out windows
MAX_LEN = TRAIN_LEN  # longest sequence: the positional table only holds trained rows
BATCH = 32
STEPS = 700
LR, WARMUP, WEIGHT_DECAY = 3e-3, 100, 0.01
SEED = 0
N_CALIB, N_HELDOUT = 256, 512  # windows
THREADS = 2
INPUT_NAME, OUTPUT_NAME = "tokens", "logits"
DEFAULT_OUT = Path(__file__).resolve().parent / "cache" / "transformer"

# Modules present with these paths in CPython 3.10 to 3.13; one missing is an error, so a
# run either reads exactly this text or stops.
TRAIN_FILES = (
    "argparse.py",
    "ast.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "gettext.py",
    "glob.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "numbers.py",
    "operator.py",
    "optparse.py",
    "random.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "tarfile.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "typing.py",
    "uuid.py",
    "warnings.py",
    "weakref.py",
)
HELDOUT_FILES = ("difflib.py", "pprint.py", "shlex.py", "queue.py", "sched.py", "selectors.py")


def encode_text(text: str) -> np.ndarray:
    """Token ids: the code point for ASCII, 0 for anything else."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < VOCAB, codes, 0).astype(np.int64)


def load_split(files: tuple[str, ...]) -> np.ndarray:
    """The concatenated tokens of ``files`` (paths relative to the stdlib directory)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise SystemExit(f"standard library file '{path}' is missing; cannot build the data")
        parts.append(encode_text(path.read_text(encoding="utf-8")))
    return np.concatenate(parts)


def windows(tokens: np.ndarray, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` windows of ``length + 1`` tokens at seeded random offsets."""
    starts = rng.integers(0, tokens.size - length - 1, size=count)
    return np.stack([tokens[s : s + length + 1] for s in starts])


class CharLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.position = nn.Embedding(MAX_LEN, D_MODEL)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D_MODEL,
                N_HEADS,
                D_FFN,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(N_LAYERS)
        )
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        # Additive causal mask built from the runtime length, so the export keeps seq dynamic.
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        for block in self.blocks:
            x = block(x, src_mask=mask)
        return self.head(self.norm(x))


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy per character (nats) and next-character accuracy."""
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    flat = flat - flat.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(flat).sum(axis=1))
    picked = flat[np.arange(flat.shape[0]), targets.reshape(-1)]
    loss = float(np.mean(log_norm - picked))
    accuracy = float(np.mean(flat.argmax(axis=1) == targets.reshape(-1)))
    return loss, accuracy


def _torch_eval(model: CharLM, batch: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(torch.from_numpy(batch[:, :-1])).numpy()
    return cross_entropy(logits, batch[:, 1:])


def _onnx_eval(path: Path, batch: np.ndarray) -> tuple[float, float, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:, :-1]})[0]
    return (*cross_entropy(logits, batch[:, 1:]), logits)


def train(model: CharLM, tokens: np.ndarray, steps: int, rng: np.random.Generator) -> list:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def schedule(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = torch.from_numpy(windows(tokens, BATCH, TRAIN_LEN, rng))
        logits = model(batch[:, :-1])
        loss = loss_fn(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - started
            history.append((step, loss.item(), elapsed))
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.1f}s", flush=True)
    model.eval()
    return history


def export(model: CharLM, out: Path, example: np.ndarray) -> tuple[Path, Path]:
    """The dynamo export (opset 20) and the TorchScript export (opset 17)."""
    sample = (torch.from_numpy(example),)
    dynamo_path, script_path = out / "charlm_2x128.onnx", out / "charlm_2x128_ts.onnx"
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=MAX_LEN)
    names = {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME}
    export_onnx(
        model,
        sample,
        dynamo_path,
        dynamo=True,
        opset=20,
        dynamic_shapes={0: batch, 1: seq},
        **names,
    )
    export_onnx(model, sample, script_path, dynamo=False, opset=17, **names)
    for path in (dynamo_path, script_path):
        onnx.checker.check_model(str(path), full_check=True)
    return dynamo_path, script_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="also copy the dynamo export and calib.npz here (charlm_2x128.onnx, charlm_calib.npz)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)

    train_tokens, held_tokens = load_split(TRAIN_FILES), load_split(HELDOUT_FILES)
    print(f"text: {train_tokens.size} training, {held_tokens.size} held-out characters")
    model = CharLM()
    started = time.perf_counter()
    history = train(model, train_tokens, args.steps, rng)
    train_seconds = time.perf_counter() - started

    eval_rng = np.random.default_rng(SEED + 1)
    calib = windows(train_tokens, N_CALIB, TRAIN_LEN, eval_rng)
    held = windows(held_tokens, N_HELDOUT, TRAIN_LEN, eval_rng)
    np.savez(args.out / "calib.npz", tokens=calib[:, :-1])
    np.savez(args.out / "heldout.npz", tokens=held[:, :-1], next_chars=held[:, 1:])

    dynamo_path, script_path = export(model, args.out, calib[:2, :-1])
    torch_train, torch_held = _torch_eval(model, calib), _torch_eval(model, held)
    onnx_train = _onnx_eval(dynamo_path, calib)
    onnx_held = _onnx_eval(dynamo_path, held)
    script_held = _onnx_eval(script_path, held)
    agreement = float(np.abs(onnx_held[2] - script_held[2]).max())
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "architecture": (
            f"Embedding({VOCAB},{D_MODEL}) + positions({MAX_LEN}), {N_LAYERS} pre-norm "
            f"TransformerEncoderLayer(d_model {D_MODEL}, {N_HEADS} heads, FFN {D_FFN}, gelu), "
            f"LayerNorm, Linear({D_MODEL},{VOCAB})"
        ),
        "parameters": sum(p.numel() for p in model.parameters()),
        "ffn_parameters": N_LAYERS * (2 * D_MODEL * D_FFN + D_FFN + D_MODEL),
        "steps": args.steps,
        "batch": BATCH,
        "train_len": TRAIN_LEN,
        "train_seconds": round(train_seconds, 1),
        "train_characters": int(train_tokens.size),
        "heldout_characters": int(held_tokens.size),
        "train_files": list(TRAIN_FILES),
        "heldout_files": list(HELDOUT_FILES),
        "history": history,
        "torch_train": torch_train,
        "torch_heldout": torch_held,
        "onnx_train": onnx_train[:2],
        "onnx_heldout": onnx_held[:2],
        "torchscript_heldout": script_held[:2],
        "dynamo_vs_torchscript_max_abs": agreement,
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"trained {args.steps} steps in {train_seconds:.0f}s; held-out loss "
        f"{onnx_held[0]:.4f} nats/char, accuracy {onnx_held[1]:.4f} (onnxruntime); "
        f"training windows {onnx_train[0]:.4f} / {onnx_train[1]:.4f}"
    )
    print(f"wrote {dynamo_path}, {script_path}, calib.npz, heldout.npz, meta.json")
    if args.models is not None:
        args.models.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dynamo_path, args.models / "charlm_2x128.onnx")
        shutil.copyfile(args.out / "calib.npz", args.models / "charlm_calib.npz")
        print(f"copied the model and its calibration windows to {args.models}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
