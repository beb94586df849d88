"""onnx_lump as an Olive pass (``pip install onnx_lump[olive]``).

Olive finds a pass through a package config that maps its name to a module path. Its
``--package-config`` file replaces Olive's own list, so write one that holds Olive's
passes and this one:

    python -m onnx_lump.integrations.olive olive_packages.json
    olive run --config workflow.json --package-config olive_packages.json

or, from Python, ``olive.workflows.run(workflow, package_config=package_config())``.
In the workflow the pass is ``{"type": "OnnxLump", "eps": 0.05}``; see
``tools/olive_example.json``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
from pathlib import Path
from typing import Any

import onnx
from olive.common.config_utils import ParamCategory
from olive.hardware.accelerator import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.passes import Pass
from olive.passes.onnx.common import get_external_data_config, ir_model_to_olive_model
from olive.passes.pass_config import BasePassConfig, PassConfigParam

from onnx_lump.data.calibration import load_inputs
from onnx_lump.integrations.onnx_ir import LumpPass, ToleranceExceeded
from onnx_lump.methods.lumping import LumpOptions
from onnx_lump.pipeline.write import FileChecks, Reference, measure_written

__all__ = ["PACKAGE_CONFIG", "OnnxLump", "package_config", "write_package_config"]

logger = logging.getLogger("onnx_lump.olive_pass")  # the pass's notes keep their name

# The entry Olive needs to find the pass by name (the key is what a workflow's "type" says).
PACKAGE_CONFIG = {
    "passes": {
        "OnnxLump": {
            "module_path": "onnx_lump.integrations.olive.OnnxLump",
            "supported_providers": ["*"],
            "supported_accelerators": ["*"],
            "supported_precisions": ["*"],
            "supported_algorithms": [],
            "supported_quantization_encodings": [],
            "dataset": "dataset_optional",
        }
    },
    "extra_dependencies": {},
}


class OnnxLump(Pass):
    """Shrink the dense chains of an ONNX model by merging neurons with
    epsilon-equivalent dynamics (onnx_lump), checking the result with onnxruntime."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        config = {
            "eps": PassConfigParam(
                type_=float,
                default_value=0.0,
                description="L1 distance under which neurons merge (0: exact merges only).",
            ),
            "calibration_path": PassConfigParam(
                type_=str | None,
                default_value=None,
                category=ParamCategory.DATA,
                description="Representative inputs (.npz with one array per model input, "
                ".npy or .csv); with it each next layer is refit.",
            ),
            "verify": PassConfigParam(
                type_=bool,
                default_value=True,
                description="Run both models in onnxruntime and compare the outputs.",
            ),
            "atol": PassConfigParam(
                type_=float | None,
                default_value=None,
                description="Fail the pass if the max abs output error exceeds this.",
            ),
            "rtol": PassConfigParam(
                type_=float | None,
                default_value=None,
                description="Fail the pass if the max rel output error exceeds this.",
            ),
            "lump_options": PassConfigParam(
                type_=dict,
                default_value={},
                description="Further keyword arguments for onnx_lump.lump() (they override "
                "the lumping options above).",
            ),
        }
        config.update(_lumping_params())
        config.update(get_external_data_config())
        return config

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        if not isinstance(model, ONNXModelHandler):
            raise ValueError("OnnxLump needs an ONNX model")
        output_model_path = resolve_onnx_path(output_model_path, Path(model.model_path).name)
        Path(output_model_path).parent.mkdir(parents=True, exist_ok=True)
        calibration = None
        if config.calibration_path:
            # only the graph inputs are read: the weights need not be loaded for this
            graph_only = onnx.load(str(model.model_path), load_external_data=False)
            calibration = load_inputs(config.calibration_path, graph_only)
        # the lumping options as the config gives them; lump_options may override them
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(LumpOptions)}
        options.update(config.lump_options or {})
        # The pass is verified on the file Olive writes, not on the model in memory: the
        # held-out error and the tolerance are onnxruntime's on that file.
        lump_pass = LumpPass(
            config.eps,
            calibration=calibration,
            verify=False,
            measure_holdout=False,
            **options,
        )
        result = lump_pass(model.load_ir_model())
        output = ir_model_to_olive_model(result.model, output_model_path, config)
        report = lump_pass.last_report
        if report is not None and (config.verify or report.split is not None):
            graph_only = onnx.load(str(model.model_path), load_external_data=False)
            checks = FileChecks(verify=config.verify, atol=config.atol, rtol=config.rtol)
            reference = Reference(str(model.model_path), ["CPUExecutionProvider"])
            report = measure_written(output.model_path, report, graph_only, reference, checks)
            lump_pass.last_report = report
            if report.verification is not None and not report.verification:
                raise ToleranceExceeded(f"{lump_pass}: {report.verification.miss()}")
        if report is not None:
            logger.info("onnx_lump:\n%s", report.summary())
        return output


def _lumping_params() -> dict[str, PassConfigParam]:
    """One config parameter per LumpOptions field (enums by their values), with its
    help: the lumping options are spelled out once, in LumpOptions."""
    params = {}
    kinds = {"symmetries": bool, "refit": bool, "force_refit": bool, "ridge": float | None}
    for option in dataclasses.fields(LumpOptions):
        default = option.default
        if isinstance(default, enum.Enum):
            default = default.value
        params[option.name] = PassConfigParam(
            type_=kinds.get(option.name, str | None),
            default_value=default,
            description=option.metadata["help"],
        )
    return params


def package_config() -> dict[str, Any]:
    """Olive's own package config with the OnnxLump entry added."""
    from olive.package_config import OlivePackageConfig

    merged = json.loads(Path(OlivePackageConfig.get_default_config_path()).read_text())
    merged.setdefault("passes", {}).update(PACKAGE_CONFIG["passes"])
    merged.setdefault("extra_dependencies", {})
    return merged


def write_package_config(path: str | Path) -> Path:
    """Write :func:`package_config` as JSON to ``path``, for ``olive run --package-config``."""
    path = Path(path)
    path.write_text(json.dumps(package_config(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m onnx_lump.integrations.olive PACKAGE_CONFIG.json")
    logger.info("wrote %s", write_package_config(sys.argv[1]))
