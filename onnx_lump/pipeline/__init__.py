"""The pipeline: :func:`~onnx_lump.pipeline.run.run` strings the stages together
(:mod:`~onnx_lump.pipeline.prepare` -> :mod:`~onnx_lump.pipeline.compress` ->
:mod:`~onnx_lump.pipeline.finish`, options grouped in :mod:`~onnx_lump.pipeline.options`),
and what it hands the user at the end: the :class:`~onnx_lump.pipeline.report.Report`,
the onnxruntime check of the compressed network against the original
(:mod:`~onnx_lump.pipeline.verify`) and the optional int8 step
(:mod:`~onnx_lump.pipeline.quantize`)."""
