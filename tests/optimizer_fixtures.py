"""Session fixtures of the optimizer tests: a digits CNN trained on real data, its NPZ datasets,
and one optimizer server (real gRPC on 127.0.0.1 port 0, real worker processes).

scikit-learn's ``load_digits`` (1797 labeled 8x8 images) is split into train / calibration /
eval sets; the Keras 3 model trains for a few epochs (about 95 % accuracy) in well under a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gateway.demo import digits_arrays, digits_cnn
from modelport import media
from modelport.store import ArtifactStore


@dataclass
class Digits:
    """The trained model in both formats and the datasets, as files and as store refs."""

    keras_path: Path
    onnx_path: Path
    train: Path
    calib: Path
    eval: Path
    eval_inputs_only: Path
    eval_x: np.ndarray
    eval_y: np.ndarray
    keras_accuracy: float


def make_digits(folder: Path, epochs: int = 6) -> Digits:
    import keras

    from modelport.conversion.onnx_export import keras_model_to_onnx

    keras.utils.set_random_seed(0)
    x, y = digits_arrays(0)
    xtr, ytr, xev, yev = x[:1400], y[:1400], x[1400:], y[1400:]
    model = digits_cnn(keras, filters=(8, 16), pool_after=2)  # 8 input channels: 2:4 sparsity applies
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)
    acc = float(model.evaluate(xev, yev, verbose=0)[1])
    folder.mkdir(parents=True, exist_ok=True)
    kp, op = folder / "digits.keras", folder / "digits.onnx"
    model.save(kp)
    keras_model_to_onnx(model, op)
    np.savez(folder / "train.npz", image=xtr, y=ytr)
    np.savez(folder / "calib.npz", x=xtr[:128])
    np.savez(folder / "eval.npz", image=xev, y=yev)
    np.savez(folder / "eval_noy.npz", image=xev)
    return Digits(kp, op, folder / "train.npz", folder / "calib.npz", folder / "eval.npz",
                  folder / "eval_noy.npz", xev, yev, acc)


def put(store: ArtifactStore, path: Path, media_type: str):
    """Store a file and return its ArtifactRef (no origin: the server shares the store)."""
    from modelport.runtime.artifacts import to_ref

    return to_ref(store.put_file(path, media_type))


MEDIA = {".keras": media.KERAS, ".h5": media.H5, ".onnx": media.ONNX, ".npz": media.NPZ}


_TRAINED: dict[str, Digits] = {}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    # Several test modules import this fixture (each gets its own FixtureDef): train once per session.
    if "digits" not in _TRAINED:
        _TRAINED["digits"] = make_digits(tmp_path_factory.mktemp("digits"))
    return _TRAINED["digits"]


@pytest.fixture(scope="session")
def optimizer_server(tmp_path_factory):
    """One optimizer service for the whole session (two workers so a slow job does not block)."""
    from modelport.runtime.background import BackgroundServer
    from optimizer_svc.service import OptimizerService
    from optimizer_svc.settings import OptimizerSettings

    store = tmp_path_factory.mktemp("optimizer-store")
    settings = OptimizerSettings(host="127.0.0.1", port=0, store=store, max_concurrent_jobs=2, warm_workers=1,
                                 job_timeout_s=600)
    srv = BackgroundServer(OptimizerService(settings)).start()
    yield srv
    srv.stop()
