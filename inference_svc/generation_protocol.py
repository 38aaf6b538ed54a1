"""KServe v2 streaming <-> generation requests, with the tensor names of Triton's TensorRT-LLM backend.

A client drives a generation model exactly as it drives TensorRT-LLM behind Triton: a
``ModelStreamInfer`` request with ``input_ids`` (INT32 [1, n]), ``input_lengths`` ([1, 1]),
``request_output_len`` ([1, 1]) and optional ``temperature``, ``runtime_top_k``, ``runtime_top_p``,
``random_seed``, ``end_id``, ``streaming``; the model is decoupled, so the answer is one response per
token (``output_ids`` INT32 [1, 1, 1], ``sequence_length`` INT32 [1, 1]) and the end is flagged the
way Triton flags it: every response carries the ``triton_final_response`` parameter; the last token's
response has it true, unless the client asked for an empty final response
(``triton_enable_empty_final_response``, tritonclient's ``enable_empty_final_response=True``), which then
follows the tokens. A generation that stops at ``end_id`` ends with an empty final response.
With ``streaming`` false the tokens come in one response ([1, 1, n]). protobuf and numpy only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from inference_svc.generation import Generation, GenerationParams
from inference_svc.sessions import TensorSpec
from modelport.errors import InvalidArgument
from modelport.kserve import codec
from modelport.kserve.v2 import grpc_service_pb2 as pb

FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"

INPUTS = [
    TensorSpec("input_ids", "INT32", (-1, -1)),
    TensorSpec("input_lengths", "INT32", (-1, 1)),
    TensorSpec("request_output_len", "INT32", (-1, 1)),
]
OPTIONAL_INPUTS = [
    TensorSpec("end_id", "INT32", (-1, 1)),
    TensorSpec("temperature", "FP32", (-1, 1)),
    TensorSpec("runtime_top_k", "INT32", (-1, 1)),
    TensorSpec("runtime_top_p", "FP32", (-1, 1)),
    TensorSpec("random_seed", "UINT64", (-1, 1)),
    TensorSpec("streaming", "BOOL", (-1, 1)),
]
OUTPUTS = [
    TensorSpec("output_ids", "INT32", (-1, -1, -1)),
    TensorSpec("sequence_length", "INT32", (-1, -1)),
]
_KNOWN = {t.name: t for t in INPUTS + OPTIONAL_INPUTS}


def _scalar(inputs: dict[str, np.ndarray], name: str, kind: str, default):
    if name not in inputs:
        return default
    value = inputs[name]
    if value.size != 1:
        raise InvalidArgument(f"input '{name}' must hold one value (shape [1, 1]), got shape {list(value.shape)}",
                              {"tensor": name})
    ok = {"int": "iu", "float": "fiu", "bool": "bu"}[kind]
    if value.dtype.kind not in ok:
        raise InvalidArgument(f"input '{name}' must be {_KNOWN[name].datatype}, got {codec.to_kserve(value.dtype)}",
                              {"tensor": name})
    item = value.reshape(-1)[0]
    return {"int": int, "float": float, "bool": bool}[kind](item)


def params_from_request(request: pb.ModelInferRequest, model: str) -> GenerationParams:
    """GenerationParams from a request's tensors; InvalidArgument naming the tensor at fault."""
    inputs = codec.decode_inputs(request)
    unknown = sorted(set(inputs) - set(_KNOWN))
    if unknown:
        raise InvalidArgument(f"model '{model}' has no input '{unknown[0]}'; a generation model takes "
                              f"{', '.join(_KNOWN)}", {"tensor": unknown[0]})
    for spec in INPUTS:
        if spec.name not in inputs:
            raise InvalidArgument(f"input '{spec.name}' is missing; model '{model}' expects {spec.describe()}",
                                  {"tensor": spec.name})
    ids = inputs["input_ids"]
    if ids.dtype.kind not in "iu":
        raise InvalidArgument(f"input 'input_ids' must be INT32 token ids, got {codec.to_kserve(ids.dtype)}",
                              {"tensor": "input_ids"})
    if ids.ndim == 2 and ids.shape[0] != 1 or ids.ndim not in (1, 2):
        raise InvalidArgument(f"input 'input_ids' must be [1, n] (one sequence per request), got "
                              f"{list(ids.shape)}; send each sequence as its own request", {"tensor": "input_ids"})
    ids = ids.reshape(-1)
    length = _scalar(inputs, "input_lengths", "int", ids.size)
    if not 0 < length <= ids.size:
        raise InvalidArgument(f"input_lengths is {length} but input_ids holds {ids.size} ids",
                              {"tensor": "input_lengths"})
    end_id = _scalar(inputs, "end_id", "int", None)
    return GenerationParams(
        prompt=[int(t) for t in ids[:length]],
        max_tokens=_scalar(inputs, "request_output_len", "int", 0),
        temperature=_scalar(inputs, "temperature", "float", 1.0),
        top_k=_scalar(inputs, "runtime_top_k", "int", 0),
        top_p=_scalar(inputs, "runtime_top_p", "float", 0.0),
        seed=_scalar(inputs, "random_seed", "int", 0),
        end_id=None if end_id is None or end_id < 0 else end_id,
        streaming=_scalar(inputs, "streaming", "bool", True),
    )


def _response(request: pb.ModelInferRequest, model: str, version: str, tokens: list[int] | None,
              final: bool) -> pb.ModelStreamInferResponse:
    outputs = {}
    if tokens:
        wanted = {o.name for o in request.outputs}
        outputs = {"output_ids": np.asarray(tokens, np.int32).reshape(1, 1, -1),
                   "sequence_length": np.asarray([[len(tokens)]], np.int32)}
        if wanted:
            outputs = {k: v for k, v in outputs.items() if k in wanted}
    response = codec.make_infer_response(model, version, outputs, request.id)
    response.parameters[FINAL].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


async def stream_responses(generation: Generation, request: pb.ModelInferRequest, model: str,
                           version: str) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """The responses of one generation (see the module doc); stopping the iteration cancels it."""
    empty_final = request.parameters[EMPTY_FINAL].bool_param if EMPTY_FINAL in request.parameters else False
    streaming = generation.params.streaming
    collected: list[int] = []
    async for event in generation:
        if event.token is not None:
            last = bool(event.end)
            if streaming:
                yield _response(request, model, version, [event.token], last and not empty_final)
            else:
                collected.append(event.token)
        if event.end:
            if not streaming:
                yield _response(request, model, version, collected, not empty_final)
                if empty_final:
                    yield _response(request, model, version, None, True)
            elif empty_final or event.token is None:
                yield _response(request, model, version, None, True)
            return
