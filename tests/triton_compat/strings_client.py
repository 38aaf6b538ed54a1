"""tritonclient.grpc with string (BYTES) models: byte-exact round trips and the non-UTF-8 answer.

Run by tests/test_inference_strings.py under the tritonclient venv: ``python strings_client.py HOST:PORT
CASES.json OUT.json``. CASES maps a case name to {"model", "input", "datatype", "shape", "values"} with
BYTES values as hex strings; OUT maps each case to {"outputs": {name: [hex...] or [int...]}} or
{"error": {"status", "message"}}.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def run_case(c: grpcclient.InferenceServerClient, case: dict) -> dict:
    if case["datatype"] == "BYTES":
        arr = np.array([bytes.fromhex(v) for v in case["values"]], dtype=np.object_).reshape(case["shape"])
    else:
        arr = np.array(case["values"], dtype=np.int64).reshape(case["shape"])
    i = grpcclient.InferInput(case["input"], list(arr.shape), case["datatype"])
    i.set_data_from_numpy(arr)
    try:
        r = c.infer(case["model"], [i])
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    outputs = {}
    for o in r.get_response().outputs:
        a = r.as_numpy(o.name)
        outputs[o.name] = {"datatype": o.datatype, "shape": list(a.shape),
                           "values": [v.hex() if isinstance(v, bytes) else int(v) for v in a.reshape(-1).tolist()]}
    return {"outputs": outputs}


def main(url: str, cases_path: str, out_path: str) -> None:
    c = grpcclient.InferenceServerClient(url)
    cases = json.loads(open(cases_path).read())
    with open(out_path, "w") as f:
        json.dump({name: run_case(c, case) for name, case in cases.items()}, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
