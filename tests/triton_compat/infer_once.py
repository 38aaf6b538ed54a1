"""One tritonclient.grpc inference against a running modelport inference server.

Run under the separate tritonclient venv (its protobuf pin cannot share a process with our stubs):
``python infer_once.py HOST:PORT MODEL IN.npz OUT.npz``. Sends every array of IN.npz as an input
(datatype from the model's metadata), writes every output the server returned to OUT.npz.
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main(url: str, model: str, inputs: str, out: str) -> None:
    c = grpcclient.InferenceServerClient(url)
    assert c.is_model_ready(model), f"{model} is not ready"
    meta = c.get_model_metadata(model, as_json=True)
    types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    with np.load(inputs) as z:
        arrays = {k: z[k] for k in z.files}
    request = []
    for name, arr in arrays.items():
        i = grpcclient.InferInput(name, list(arr.shape), types[name])
        i.set_data_from_numpy(arr)
        request.append(i)
    result = c.infer(model, request)
    np.savez(out, **{o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]})


if __name__ == "__main__":
    main(*sys.argv[1:5])
