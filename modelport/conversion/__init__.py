"""TensorFlow-side conversion code shared by the converter and optimizer (TF imported lazily).

Importing this package is cheap: every submodule imports tensorflow / tf2onnx inside its
functions, so a process that never converts never pays for TensorFlow.
"""
