"""``make demo``: a digits CNN from training to a verified, optimized, served model in one run.

Trains a small CNN on scikit-learn's 8x8 digits (real data, a few seconds), saves ``.keras``,
starts the three services with the ``modelport up`` launcher, deploys with ``--optimize auto``
(calibration and evaluation NPZ from held-out digits), prints the report, classifies the test
digits over KServe v2 gRPC and compares with Keras, then stops the services.

    python -m gateway.demo [--workdir DIR] [--epochs N] [--default-ports] [--optimize auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def digits_arrays(rng: np.random.Generator | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (x float32 [N, 8, 8, 1] in 0..1, y int64), shuffled by ``rng`` (or a seed)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int64")
    order = rng.permutation(len(y))
    return np.ascontiguousarray(x[order]), y[order]


def digits_cnn(keras, filters: tuple[int, int] = (16, 32), pool_after: int = 1, head: str = "flatten",
               dense: int = 64):
    """The digits CNN every demo, test and benchmark builds: input ``image`` (8, 8, 1), output ``probs`` (10).

    Two 3x3 ReLU convolutions with ``filters``, a 2x2 max-pool after conv ``pool_after`` (1 or 2), a
    ``flatten`` or global-average-pool ``head``, a ReLU dense layer of ``dense`` units, softmax over 10.
    """
    inp = keras.Input((8, 8, 1), name="image")
    h = inp
    for i, f in enumerate(filters, start=1):
        h = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(h)
        if i == pool_after:
            h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h) if head == "flatten" else keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(dense, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    return keras.Model(inp, out, name="digits_cnn")


def digits_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn digits as float32 (N, 8, 8, 1) in [0, 1]: train / val / test with int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.35, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.55, random_state=seed,
                                                    stratify=y_rest)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
            "x_test": x_test, "y_test": y_test}


def train_digits_cnn(out: Path, epochs: int = 12, seed: int = 0, data: dict | None = None) -> dict:
    """Train the demo CNN, save it to ``out`` (.keras); returns the splits plus Keras test accuracy."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the demo output is the report, not TF start-up noise
    import keras

    data = data or digits_splits(seed)
    keras.utils.set_random_seed(seed)
    model = digits_cnn(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data["x_train"], data["y_train"], epochs=epochs, batch_size=32, verbose=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    probs = model.predict(data["x_test"], verbose=0)
    return {**data, "keras_test_accuracy": float(np.mean(np.argmax(probs, 1) == data["y_test"]))}


def write_datasets(data: dict, folder: Path) -> tuple[Path, Path, Path]:
    """calib.npz (training images), eval.npz (validation images + labels) and train.npz (training
    images + labels, for the fine-tuning techniques) for the optimizer."""
    folder.mkdir(parents=True, exist_ok=True)
    calib, evaluation, train = folder / "calib.npz", folder / "eval.npz", folder / "train.npz"
    np.savez(calib, x=data["x_train"][:256])
    np.savez(evaluation, x=data["x_val"], y=data["y_val"])
    np.savez(train, x=data["x_train"], y=data["y_train"])
    return calib, evaluation, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".modelport/demo"), help="model, data, store, logs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--optimize", default="auto", help="auto, none, or comma-separated techniques")
    parser.add_argument("--no-finetune", action="store_true",
                        help="no training data for the optimizer: skips prune/cluster/qat/distill (faster)")
    parser.add_argument("--default-ports", action="store_true",
                        help="use 50051/50052/8001 instead of free ephemeral ports")
    args = parser.parse_args(argv)

    from rich.console import Console

    from gateway.cli.render import RichProgress, print_report
    from gateway.launcher import Launcher, LaunchError
    from modelport.client import Client
    from modelport.deploy import DeploySpec, StageFailed, run_pipeline

    console = Console()
    work = args.workdir.resolve()
    t_start = time.perf_counter()

    console.rule("[bold]1. train a CNN on scikit-learn digits")
    t0 = time.perf_counter()
    model_path = work / "digits.keras"
    data = train_digits_cnn(model_path, epochs=args.epochs)
    calib, evaluation, train = write_datasets(data, work / "data")
    console.print(f"trained in {time.perf_counter() - t0:.1f} s: {len(data['x_train'])} train / {len(data['x_val'])} "
                  f"val / {len(data['x_test'])} test digits; Keras test accuracy "
                  f"[bold]{data['keras_test_accuracy'] * 100:.2f}%[/]; saved {model_path}")

    console.rule("[bold]2. modelport up")
    ports = None if args.default_ports else {"converter": 0, "optimizer": 0, "inference": 0}
    launcher = Launcher(work / "store", ports=ports, log_dir=work / "logs")
    try:
        addrs = launcher.start(timeout=300)
    except LaunchError as e:
        console.print(f"[red]services did not start:[/] {e}")
        return 1
    try:
        for name, addr in addrs.items():
            console.print(f"{name:<9} SERVING at {addr}")
        with Client(**addrs) as client:
            console.rule("[bold]3. modelport deploy digits.keras --optimize " + args.optimize)
            spec = DeploySpec(model=model_path, name="digits", optimize=args.optimize, calib=calib,
                              eval=evaluation, train=None if args.no_finetune else train, max_accuracy_drop=0.01)
            try:
                with RichProgress(Console(stderr=True)) as progress:
                    report = run_pipeline(client, spec, progress)
            except StageFailed as e:
                print_report(console, e.report)
                console.print(f"[dim]service logs: {work / 'logs'}[/]")
                return 1
            print_report(console, report)

            console.rule("[bold]4. classify held-out digits over KServe v2 gRPC")
            x_test, y_test = data["x_test"], data["y_test"]
            input_name = report.stage("convert").data["inputs"][0]["name"]
            t0 = time.perf_counter()
            preds = []
            for i in range(0, len(x_test), 32):
                out = client.infer("digits", {input_name: x_test[i:i + 32]})
                preds.append(np.argmax(next(iter(out.values())), axis=1))
            elapsed = time.perf_counter() - t0
            pred = np.concatenate(preds)
            acc = float(np.mean(pred == y_test))
            console.print(f"first 20 test digits: true {y_test[:20].tolist()}")
            console.print(f"                      pred {pred[:20].tolist()}")
            console.print(f"served accuracy on {len(y_test)} held-out digits: [bold green]{acc * 100:.2f}%[/] "
                          f"(Keras original: {data['keras_test_accuracy'] * 100:.2f}%), "
                          f"{len(preds)} requests in {elapsed * 1000:.0f} ms")
    finally:
        console.rule("[bold]5. stop the services")
        codes = launcher.stop()
        console.print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
    console.print(f"[bold]demo finished in {time.perf_counter() - t_start:.0f} s[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
