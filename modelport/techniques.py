"""The one vocabulary of optimization techniques, shared by the optimizer, the CLI and reports."""

from __future__ import annotations

# Work on any model (ONNX, or the ONNX conversion of a Keras model), through onnxruntime.
ONNX_TECHNIQUES = ("graph", "fp16", "int8-dynamic", "int8-static")
# Need a Keras source: tensorflow-model-optimization in a tf-keras worker, and distillation.
KERAS_TECHNIQUES = ("prune", "prune-2:4", "cluster", "qat", "distill")
# Need a Keras source: TFLite post-training quantization.
TFLITE_TECHNIQUES = ("tflite-dynamic", "tflite-fp16", "tflite-int8")
# Need a generation model (an exported causal LM: model.onnx step + generation.json): weight-only
# quantization of the step's MatMuls (onnxruntime MatMulNBits), measured in tokens/s and greedy agreement.
LLM_TECHNIQUES = ("int8-weight-only", "int4-weight-only")
ALL_TECHNIQUES = ONNX_TECHNIQUES + KERAS_TECHNIQUES + TFLITE_TECHNIQUES + LLM_TECHNIQUES
# Techniques that only apply to a Keras source model.
KERAS_SOURCE_TECHNIQUES = frozenset(KERAS_TECHNIQUES + TFLITE_TECHNIQUES)
AUTO = "auto"
