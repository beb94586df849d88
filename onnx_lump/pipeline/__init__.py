"""What the stages hand the user at the end: the :class:`~onnx_lump.pipeline.report.Report`
(:mod:`~onnx_lump.pipeline.report`), the onnxruntime check of the compressed network
against the original (:mod:`~onnx_lump.pipeline.verify`) and the optional int8 step
(:mod:`~onnx_lump.pipeline.quantize`)."""
