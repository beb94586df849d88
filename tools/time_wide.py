"""Time the pass on a wide model against loading and saving the same model.

Builds a float32 network with 4 hidden Tanh layers of 4096 (about 50 M parameters, 200 MB),
where every layer holds clusters of near-identical neurons (512 prototypes, 8 noisy copies
each) as over-parameterised layers do, then measures in one run, interleaved and repeated
(medians, since other processes share the machine):

* ``onnx.load`` + ``onnx.save`` (the issue's baseline), and the same through
  ``onnx_lump.graph.io.load.load_model`` + ``onnx_lump.graph.io.save.save_model`` (the code
  the pass itself uses);
* the data-free pass end to end: ``load_model``, ``onnx_lump.lump`` (no verification),
  ``save_model``, at an epsilon that merges the clusters (0.05) and at epsilon 0.

With ``--memory ROWS...`` it also runs the data path (``lump`` with calibration data, refit
on) on a 4096-wide model in a subprocess per row count and reads its peak RSS
(``resource.getrusage``).

With ``--chain-memory`` it also reads the peak RSS of the data-free pass on one chain of
two width x width layers with external data, and on one chain of ``--chain-depth``
clustered width x width layers (eps 0.05 and 0): the cases the tests bound by three
layers plus 300 MB. ``--width 8192 --chain-memory`` measures the issue's 8192 timing and
the 8192-wide chains in one run.

    python -m tools.time_wide [--width 4096] [--repeats 5] [--workdir /tmp] [--out DIR]

Each part goes to its section file under ``tools/results/speed/`` (``datafree.md``,
``chain_memory.md``, ``memory.md``) and ``tools/results/speed.md`` is rebuilt
(``tools/speed_report.py``); ``--out /tmp/x`` keeps a smoke run out of ``tools/results``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_lump import lump
from tools import child_env
from tools.speed_report import RESULTS, command_line, write_sections


def build(
    width: int, n_in: int = 64, n_out: int = 8, depth: int = 4, copies: int = 8
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    widths = [n_in, *[width] * depth, n_out]
    nodes, inits, current = [], [], "x"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        prototypes = rng.standard_normal((max(fan_out // copies, 1), fan_in)) / np.sqrt(fan_in)
        weight = np.repeat(prototypes, copies, axis=0)[:fan_out] if index < depth else prototypes
        weight = weight + 1e-4 * rng.standard_normal(weight.shape) / np.sqrt(fan_in)
        bias = np.zeros(weight.shape[0])
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"W{index}"),
            numpy_helper.from_array(bias.astype(np.float32), f"b{index}"),
        ]
        nodes.append(
            helper.make_node("Gemm", [current, f"W{index}", f"b{index}"], [f"g{index}"], transB=1)
        )
        current = f"g{index}"
        if index < depth:
            nodes.append(helper.make_node("Tanh", [current], [f"t{index}"]))
            current = f"t{index}"
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [
            helper.make_tensor_value_info(
                current, TensorProto.FLOAT, ["N", widths[-1] // copies or 1]
            )
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _median(values: list[float]) -> float:
    return float(np.median(values))


def measure(width: int = 4096, repeats: int = 5, workdir: Path | None = None) -> dict:
    """Medians (wall and CPU seconds) of the I/O baselines and the data-free pass."""
    from onnx_lump.graph.io.load import load_model
    from onnx_lump.graph.io.save import save_model

    workdir = Path(workdir or tempfile.gettempdir())
    path, out = workdir / f"wide_{width}.onnx", workdir / f"wide_{width}_out.onnx"
    onnx.save(build(width), path)

    def onnx_io() -> None:
        onnx.save(onnx.load(path), out)

    def modelio_io() -> None:
        loaded = load_model(path)
        save_model(loaded.model, out, external_data=loaded.external_data)

    reports = {}

    def lump_pass(eps: float):
        def run() -> None:
            loaded = load_model(path)
            reduced, reports[eps] = lump(loaded.model, eps, verify=False)
            save_model(reduced, out, external_data=loaded.external_data)

        return run

    steps = {
        "onnx.load + onnx.save": onnx_io,
        "load_model + save_model": modelio_io,
        "pass eps 0.05": lump_pass(0.05),
        "pass eps 0": lump_pass(0.0),
    }
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):  # interleaved, so that a busy moment hits every step alike
        for name, step in steps.items():
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
    path.unlink()
    out.unlink(missing_ok=True)
    kept = {eps: report.retained for eps, report in reports.items()}
    widths = {eps: [s.width_after for s in r.layers[:-1]] for eps, r in reports.items()}
    return {
        "width": width,
        "repeats": repeats,
        "wall": {name: _median(v) for name, v in wall.items()},
        "cpu": {name: _median(v) for name, v in cpu.items()},
        "kept": kept,
        "widths": widths,
    }


def markdown(result: dict) -> str:
    wall, cpu = result["wall"], result["cpu"]
    base = "onnx.load + onnx.save"
    lines = [
        f"Data-free pass on 4 hidden Tanh layers of {result['width']} (float32, "
        f"{result['repeats']} interleaved repeats, medians; the pass is `load_model` + "
        "`lump(verify=False)` + `save_model`, I/O included)\n",
        "| step | wall s | CPU s | wall / onnx.load+save | CPU / onnx.load+save |",
        "|---|---|---|---|---|",
    ]
    for name in wall:
        lines.append(
            f"| {name} | {wall[name]:.3f} | {cpu[name]:.3f} | "
            f"{wall[name] / wall[base]:.2f}x | {cpu[name] / cpu[base]:.2f}x |"
        )
    for eps, kept in sorted(result["kept"].items()):
        lines.append(
            f"\neps {eps:g}: hidden widths {result['widths'][eps]}, "
            f"{100 * kept:.1f}% of the parameters kept"
        )
    return "\n".join(lines) + "\n"


_MEMORY_CHILD = """
import resource, sys, time
import numpy as np
from tools.time_wide import build
from onnx_lump import lump
rows, width = {rows}, {width}
model = build(width, depth={depth})
x = np.random.default_rng(1).standard_normal((rows, 64)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
_, report = lump(model, 0.05, calibration={{"x": x}}, verify=False)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      time.perf_counter() - started, report.retained)
"""


def data_path_memory(rows: int, width: int = 4096, depth: int = 4) -> dict:
    """Peak RSS (MiB) of the data path (lump with calibration, refit on) in a fresh
    subprocess, and what the model and the calibration alone took before it."""
    code = _MEMORY_CHILD.format(rows=rows, width=width, depth=depth)
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"rows": rows, "error": done.stderr.strip().splitlines()[-1:]}
    before, peak, seconds, kept = done.stdout.split()[-4:]
    return {
        "rows": rows,
        "before_mib": int(before) / 1024,
        "peak_mib": int(peak) / 1024,
        "seconds": float(seconds),
        "kept": float(kept),
    }


_PASS_CHILD = """
import json, resource, sys
from onnx_lump import compress, lump
from onnx_lump.graph.io.load import load_model
from onnx_lump.graph.io.save import save_model
from onnx_lump.methods import Exact

def peak_bytes():
    # Linux carries ru_maxrss over fork + exec, so a child started by a large parent
    # (one that built the model) would report the parent's peak: VmHWM is this process's.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

loaded = load_model(sys.argv[1])
eps = float(sys.argv[3]) if len(sys.argv) > 3 else None
if eps is None:
    reduced, report = compress(loaded.model, Exact(), verify=False)
else:
    reduced, report = lump(loaded.model, eps, verify=False)
save_model(reduced, sys.argv[2], external_data=loaded.external_data)
print(json.dumps({"peak": peak_bytes(), "before": report.params_before,
                  "after": report.params_after}))
"""


def build_deep_model(path: Path, width: int, chains: int) -> int:
    """``chains`` chains Gemm -> Relu -> Gemm of width x width float32 layers (one planted
    duplicate each), separated by Sin; external data. Returns the largest layer's bytes."""
    rng = np.random.default_rng(0)
    inits, nodes, current = [], [], "x"
    for k in range(chains):
        for j in range(2):
            weight = rng.standard_normal((width, width), dtype=np.float32)
            weight *= np.float32(1 / np.sqrt(width))
            if j == 0:
                weight[-1] = weight[0]
            inits.append(numpy_helper.from_array(weight, f"W{k}_{j}"))
            nodes.append(helper.make_node("Gemm", [current, f"W{k}_{j}"], [f"h{k}_{j}"], transB=1))
            current = f"h{k}_{j}"
            if j == 0:
                nodes.append(helper.make_node("Relu", [current], [f"r{k}"]))
                current = f"r{k}"
        nodes.append(helper.make_node("Sin", [current], [f"s{k}"]))
        current = f"s{k}"
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return width * width * 4


def build_wide_chain(path: Path, width: int, depth: int = 5, copies: int = 8) -> int:
    """One chain of ``depth`` width x width float32 Gemm layers, Tanh between, with
    external data written a layer at a time (the builder holds one layer): every layer
    but the last holds ``width / copies`` prototype rows, each ``copies`` times with
    noise of 1e-4 of their scale, so eps 0.05 merges them (the issue's model: five
    12,288-wide layers). Returns the largest layer's bytes."""
    rng = np.random.default_rng(0)
    data_name = f"{path.name}.data"
    inits, nodes, current = [], [], "x"
    scale = np.float32(1 / np.sqrt(width))
    with open(path.parent / data_name, "wb") as data:
        for k in range(depth):
            if k < depth - 1:
                rows = rng.standard_normal((max(width // copies, 1), width), dtype=np.float32)
                weight = np.repeat(rows, copies, axis=0)[:width]
                del rows
                weight += np.float32(1e-4) * rng.standard_normal(weight.shape, dtype=np.float32)
            else:
                weight = rng.standard_normal((width, width), dtype=np.float32)
            weight *= scale
            tensor = TensorProto(name=f"W{k}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(data.tell()))):
                tensor.external_data.add(key=key, value=value)
            tensor.external_data.add(key="length", value=str(weight.nbytes))
            data.write(weight.tobytes())
            del weight
            inits += [tensor, numpy_helper.from_array(np.zeros(width, np.float32), f"b{k}")]
            nodes.append(helper.make_node("Gemm", [current, f"W{k}", f"b{k}"], [f"g{k}"], transB=1))
            current = f"g{k}"
            if k < depth - 1:
                nodes.append(helper.make_node("Tanh", [current], [f"t{k}"]))
                current = f"t{k}"
    graph = helper.make_graph(
        nodes,
        "wide_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.write_bytes(model.SerializeToString())
    return width * width * 4


def measure_pass(source: Path, out: Path, eps: float | None = None) -> dict:
    """The data-free pass (load, compress, save; Exact, or lump at ``eps`` when given)
    on ``source`` in a fresh subprocess: its peak RSS (VmHWM, bytes) and the parameters
    before and after. RuntimeError with the child's last error line if it fails."""
    extra = [] if eps is None else [repr(float(eps))]
    done = subprocess.run(
        [sys.executable, "-c", _PASS_CHILD, str(source), str(out), *extra],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def chain_memory(width: int = 4096, workdir: Path | None = None, depth: int = 5) -> list[dict]:
    """Peak RSS of the data-free pass (:func:`measure_pass`) on chains of width x width
    float32 layers with external data, against the bound the tests hold it to (three
    times the largest layer plus 300 MB): Gemm -> Relu -> Gemm with one planted duplicate
    neuron (Exact), and :func:`build_wide_chain` of ``depth`` layers (lump at eps 0.05
    and at eps 0). One row per case."""
    layer = width * width * 4
    cases = [
        ("2 layers, one duplicate, exact", None, None),
        (f"{depth} clustered layers, eps 0.05", 0.05, depth),
        (f"{depth} clustered layers, eps 0", 0.0, depth),
    ]
    rows = []
    for label, eps, layers in cases:
        row = {
            "case": label,
            "width": width,
            "layer_mib": layer / 2**20,
            "bound_mib": (3 * layer + 300 * 2**20) / 2**20,
        }
        with tempfile.TemporaryDirectory(dir=workdir) as folder:
            source = Path(folder) / "chain.onnx"
            if layers is None:
                build_deep_model(source, width, chains=1)
            else:
                build_wide_chain(source, width, depth=layers)
            try:
                measured = measure_pass(source, Path(folder) / "out.onnx", eps)
            except RuntimeError as exc:
                rows.append({**row, "error": str(exc).splitlines()[-1:]})
                continue
        row["peak_mib"] = measured["peak"] / 2**20
        row["merged"] = measured["after"] < measured["before"]
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="results folder: writes OUT/speed/<section>.md and rebuilds OUT/speed.md "
        "(default tools/results); a FILE.md gets the markdown alone",
    )
    parser.add_argument(
        "--memory", type=int, nargs="*", default=[], help="calibration row counts to measure"
    )
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument(
        "--chain-memory",
        action="store_true",
        help="also measure the data-free peak RSS on chains of width x width layers "
        "(two layers, exact; --chain-depth clustered layers at eps 0.05 and 0)",
    )
    parser.add_argument("--chain-depth", type=int, default=5)
    args = parser.parse_args()
    sections = {}  # speed_report section name -> its markdown
    if not args.skip_timing:
        sections["datafree"] = markdown(measure(args.width, args.repeats, args.workdir))
    if args.chain_memory:
        text = (
            f"\nData-free peak RSS on one chain of {args.width} x {args.width} float32 layers "
            "with external data (load + compress + save, no verification, subprocess, "
            "VmHWM)\n\n"
            "| chain | layer MiB | peak RSS MiB | bound (3 x layer + 300) MiB | peak / bound |\n"
            "|---|---|---|---|---|\n"
        )
        for m in chain_memory(args.width, args.workdir, args.chain_depth):
            if "error" in m:
                text += f"| {m['case']} | {m['layer_mib']:.0f} | failed: {m['error']} | | |\n"
            else:
                text += (
                    f"| {m['case']} | {m['layer_mib']:.0f} | {m['peak_mib']:.0f} | "
                    f"{m['bound_mib']:.0f} | {m['peak_mib'] / m['bound_mib']:.2f} |\n"
                )
        sections["chain_memory"] = text
    if args.memory:
        text = (
            "\nData path peak RSS (lump eps 0.05 with calibration, refit on, 4 x "
            f"{args.width}; subprocess per row count)\n\n"
            "| calibration rows | RSS before lump MiB | peak RSS MiB | seconds |\n"
            "|---|---|---|---|\n"
        )
        for rows in args.memory:
            m = data_path_memory(rows, args.width)
            if "error" in m:
                text += f"| {rows} | failed: {m['error']} | | |\n"
            else:
                text += (
                    f"| {rows} | {m['before_mib']:.0f} | {m['peak_mib']:.0f} | "
                    f"{m['seconds']:.1f} |\n"
                )
            print(m, flush=True)
        sections["memory"] = text
    print("".join(sections.values()))
    write_sections(args.out, sections, command_line("time_wide"))


if __name__ == "__main__":
    main()
