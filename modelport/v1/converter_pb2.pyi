from modelport.v1 import artifacts_pb2 as _artifacts_pb2
from modelport.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParityOptions(_message.Message):
    __slots__ = ("samples", "num_samples", "rtol", "atol", "allow_mismatch", "seed", "quant_max_steps", "quant_mean_steps", "min_cosine", "min_topk_agreement")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    QUANT_MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    QUANT_MEAN_STEPS_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MIN_TOPK_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    samples: _artifacts_pb2.ArtifactRef
    num_samples: int
    rtol: float
    atol: float
    allow_mismatch: bool
    seed: int
    quant_max_steps: float
    quant_mean_steps: float
    min_cosine: float
    min_topk_agreement: float
    def __init__(self, samples: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., num_samples: _Optional[int] = ..., rtol: _Optional[float] = ..., atol: _Optional[float] = ..., allow_mismatch: _Optional[bool] = ..., seed: _Optional[int] = ..., quant_max_steps: _Optional[float] = ..., quant_mean_steps: _Optional[float] = ..., min_cosine: _Optional[float] = ..., min_topk_agreement: _Optional[float] = ...) -> None: ...

class ConvertRequest(_message.Message):
    __slots__ = ("source", "target_format", "opset", "parity", "trust_remote_code", "fixed_batch_size")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    FIXED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    source: _artifacts_pb2.ArtifactRef
    target_format: str
    opset: int
    parity: ParityOptions
    trust_remote_code: bool
    fixed_batch_size: int
    def __init__(self, source: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., target_format: _Optional[str] = ..., opset: _Optional[int] = ..., parity: _Optional[_Union[ParityOptions, _Mapping]] = ..., trust_remote_code: _Optional[bool] = ..., fixed_batch_size: _Optional[int] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("artifact", "trust_remote_code")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    artifact: _artifacts_pb2.ArtifactRef
    trust_remote_code: bool
    def __init__(self, artifact: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., trust_remote_code: _Optional[bool] = ...) -> None: ...
