"""The obvious MLServer 1.7.1 runtime for one ONNX model: an ``MLModel`` holding an onnxruntime session with
default options; ``predict`` decodes and encodes with MLServer's own NumpyCodec. Served by ``mlserver start``
from .venv-mlserver (make peer-venvs) with this folder on PYTHONPATH and a model-settings.json naming
``mlserver_peer.OnnxRuntime`` and ``parameters.uri`` (bench_serving writes both).
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(await get_model_uri(self._settings), providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        names = [o.name for o in self.session.get_outputs()]
        outs = self.session.run(names, feeds)
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(names, outs, strict=True)])
