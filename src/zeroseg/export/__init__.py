"""Deployment: a checkpoint with a fixed vocabulary exported as one ONNX graph (:func:`export_onnx`), its metadata
(:func:`read_metadata`) and the onnxruntime predictor that runs it (:class:`OnnxPredictor`). See docs/export.md."""

from zeroseg.export.onnx import OnnxPredictor, export_onnx, read_metadata

__all__ = ["OnnxPredictor", "export_onnx", "read_metadata"]
