"""ONNX export, parity check, ONNX Runtime optimization and int8 quantization."""

from .onnx import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
