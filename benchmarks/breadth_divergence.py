"""Where a Keras model and its ONNX conversion diverge, layer by layer (issue 18, EfficientNetV2L).

Runs a ``.keras`` model with the outputs of its stem, every ~12th residual ``*_add`` layer and its head
exposed, three ways on the converter's parity inputs (8 samples, uniform [-1, 1), seed 0): TensorFlow
float32, the ONNX export of that multi-output model (modelport's weights-as-inputs route) in onnxruntime,
and the same layers and weights rebuilt in float64 (``modelport.conversion.source_noise.float64_twin``).
Prints, per layer, the max abs difference over the float64 layer's max |value|: a conversion bug shows as a
jump of the ONNX column at one layer while TensorFlow's own float32 column stays small; amplified rounding
shows as both columns growing together.

    .venv/bin/python -m benchmarks.breadth_divergence /tmp/breadth/models/EfficientNetV2L.keras
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(path: str) -> None:
    import keras
    import numpy as np
    import onnxruntime as ort

    from modelport.conversion import large_export
    from modelport.conversion.source_noise import float64_twin

    m = keras.saving.load_model(path, compile=False)
    adds = [layer for layer in m.layers if layer.name.endswith("_add")]
    pick = [m.layers[1], m.layers[3]] + adds[::max(1, len(adds) // 12)] + adds[-1:] + [m.layers[-3], m.layers[-1]]
    seen: set[str] = set()
    pick = [layer for layer in pick if not (layer.name in seen or seen.add(layer.name))]
    multi = keras.Model(m.input, [layer.output for layer in pick])
    x = np.random.default_rng(0).uniform(-1, 1, (8, *m.input_shape[1:])).astype("float32")
    r32 = [np.asarray(t) for t in multi(x, training=False)]
    with tempfile.TemporaryDirectory() as d:
        onnx_path = large_export.export_weights_as_inputs(large_export.keras_weights_trace(multi), d, 17,
                                                          external=False)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        by = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
        got = [by[next(n for n in names if n == layer.name or n.startswith(layer.name))] for layer in pick]
        del sess, by
    order = [layer.name for layer in m.layers]
    twin = float64_twin(multi)
    del m, multi
    gc.collect()
    r64 = [np.asarray(t) for t in twin(x.astype(np.float64), training=False)]
    print("| layer | depth | max abs (float64) | TF float32 vs float64 | ONNX vs float64 | ONNX vs TF float32 |")
    print("|---|---|---|---|---|---|")
    for layer, a, o, e in zip(pick, r32, got, r64, strict=True):
        scale = float(np.abs(e).max()) or 1.0

        def rel(u, v, scale=scale):
            return float(np.abs(u - v).max()) / scale

        print(f"| {layer.name} | {order.index(layer.name)} | {scale:.3g} | {rel(a, e):.2e} | {rel(o, e):.2e} | "
              f"{rel(o, a):.2e} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
