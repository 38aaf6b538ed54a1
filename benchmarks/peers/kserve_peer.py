"""The obvious KServe 0.21 server for one ONNX model: a ``kserve.Model`` holding an onnxruntime session with
default options; ``predict`` decodes with KServe's own codec. Run from .venv-kserve (make peer-venvs):

    .venv-kserve/bin/python benchmarks/peers/kserve_peer.py --name mlp --path mlp.onnx --grpc_port 8081 --http_port 8080
"""

import argparse

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(names, feeds)
        return InferResponse(model_name=self.name, response_id=payload.id, infer_outputs=[
            InferOutput(name=n, shape=list(a.shape), datatype="FP32", data=a) for n, a in zip(names, outs, strict=True)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], conflict_handler="resolve")
    parser.add_argument("--name", required=True)
    parser.add_argument("--path", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port).start([OnnxModel(args.name, args.path)])
