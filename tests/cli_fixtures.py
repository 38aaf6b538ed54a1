"""Fixtures of the gateway tests: one set of real services (the `modelport up` launcher, port 0)
per session, a tiny ONNX classifier built with onnx.helper, and a small digits CNN trained once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.launcher import Launcher


def tiny_onnx_classifier(path: Path, n_in: int = 4, n_out: int = 3, seed: int = 0) -> Path:
    """probs = softmax(x @ W + b): input 'x' FP32 [-1, n_in], output 'probs' FP32 [-1, n_out]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_out)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport-tests")
    model.ir_version = 9
    onnx.save(model, path)
    return path


def tiny_onnx_reference(x: np.ndarray, seed: int = 0, n_out: int = 3) -> np.ndarray:
    """What tiny_onnx_classifier computes, in numpy."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(x.shape[1], n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    z = x @ w + b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def gateway_services(tmp_path_factory):
    """The three services as real processes (launcher of `modelport up`), shared by the session."""
    root = tmp_path_factory.mktemp("gateway")
    launcher = Launcher(root / "store", ports={"converter": 0, "optimizer": 0, "inference": 0},
                        log_dir=root / "logs")
    addrs = launcher.start(timeout=300)
    yield {"addresses": addrs, "launcher": launcher, "logs": root / "logs"}
    launcher.stop()


@pytest.fixture(scope="session")
def gateway_args(gateway_services):
    """Global CLI flags pointing at the session's services."""
    a = gateway_services["addresses"]
    return ["--converter", a["converter"], "--optimizer", a["optimizer"], "--inference", a["inference"]]


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """A small digits CNN (.keras) trained once, with eval/calib NPZ and held-out test data."""
    from gateway.demo import train_digits_cnn, write_datasets

    root = tmp_path_factory.mktemp("digits")
    data = train_digits_cnn(root / "digits.keras", epochs=3)
    calib, evaluation, _ = write_datasets(data, root)
    return {"model": root / "digits.keras", "calib": calib, "eval": evaluation, **data}
