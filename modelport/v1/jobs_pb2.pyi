from modelport.v1 import artifacts_pb2 as _artifacts_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("format", "inputs", "outputs", "opset", "producer", "size_bytes", "parameter_count", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    format: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    opset: int
    producer: str
    size_bytes: int
    parameter_count: int
    details: _containers.ScalarMap[str, str]
    def __init__(self, format: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., opset: _Optional[int] = ..., producer: _Optional[str] = ..., size_bytes: _Optional[int] = ..., parameter_count: _Optional[int] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OutputParity(_message.Message):
    __slots__ = ("name", "max_abs_diff", "max_rel_diff", "allclose", "nan_or_inf", "top1_agreement", "cosine", "topk_agreement", "top_k", "quant_scale", "quant_zero_point", "max_diff_steps", "mean_diff_steps", "passed", "judged_by", "quant_source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    ALLCLOSE_FIELD_NUMBER: _ClassVar[int]
    NAN_OR_INF_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    TOPK_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    QUANT_SCALE_FIELD_NUMBER: _ClassVar[int]
    QUANT_ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    MAX_DIFF_STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_DIFF_STEPS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_BY_FIELD_NUMBER: _ClassVar[int]
    QUANT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_abs_diff: float
    max_rel_diff: float
    allclose: bool
    nan_or_inf: bool
    top1_agreement: float
    cosine: float
    topk_agreement: float
    top_k: int
    quant_scale: float
    quant_zero_point: int
    max_diff_steps: float
    mean_diff_steps: float
    passed: bool
    judged_by: str
    quant_source: str
    def __init__(self, name: _Optional[str] = ..., max_abs_diff: _Optional[float] = ..., max_rel_diff: _Optional[float] = ..., allclose: _Optional[bool] = ..., nan_or_inf: _Optional[bool] = ..., top1_agreement: _Optional[float] = ..., cosine: _Optional[float] = ..., topk_agreement: _Optional[float] = ..., top_k: _Optional[int] = ..., quant_scale: _Optional[float] = ..., quant_zero_point: _Optional[int] = ..., max_diff_steps: _Optional[float] = ..., mean_diff_steps: _Optional[float] = ..., passed: _Optional[bool] = ..., judged_by: _Optional[str] = ..., quant_source: _Optional[str] = ...) -> None: ...

class ParityReport(_message.Message):
    __slots__ = ("outputs", "passed", "rtol", "atol", "samples", "inputs_source", "quant_max_steps", "quant_mean_steps", "min_cosine", "min_topk_agreement")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    QUANT_MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    QUANT_MEAN_STEPS_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MIN_TOPK_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputParity]
    passed: bool
    rtol: float
    atol: float
    samples: int
    inputs_source: str
    quant_max_steps: float
    quant_mean_steps: float
    min_cosine: float
    min_topk_agreement: float
    def __init__(self, outputs: _Optional[_Iterable[_Union[OutputParity, _Mapping]]] = ..., passed: _Optional[bool] = ..., rtol: _Optional[float] = ..., atol: _Optional[float] = ..., samples: _Optional[int] = ..., inputs_source: _Optional[str] = ..., quant_max_steps: _Optional[float] = ..., quant_mean_steps: _Optional[float] = ..., min_cosine: _Optional[float] = ..., min_topk_agreement: _Optional[float] = ...) -> None: ...

class ConvertResult(_message.Message):
    __slots__ = ("artifact", "info", "parity", "source_info", "seconds")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    artifact: _artifacts_pb2.ArtifactRef
    info: ModelInfo
    parity: ParityReport
    source_info: ModelInfo
    seconds: float
    def __init__(self, artifact: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., info: _Optional[_Union[ModelInfo, _Mapping]] = ..., parity: _Optional[_Union[ParityReport, _Mapping]] = ..., source_info: _Optional[_Union[ModelInfo, _Mapping]] = ..., seconds: _Optional[float] = ...) -> None: ...

class CandidateReport(_message.Message):
    __slots__ = ("technique", "artifact", "format", "size_bytes", "gzip_size_bytes", "latency_p50_ms", "latency_p90_ms", "accuracy", "agreement", "max_abs_diff", "within_budget", "chosen", "note", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GZIP_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    WITHIN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    technique: str
    artifact: _artifacts_pb2.ArtifactRef
    format: str
    size_bytes: int
    gzip_size_bytes: int
    latency_p50_ms: float
    latency_p90_ms: float
    accuracy: float
    agreement: float
    max_abs_diff: float
    within_budget: bool
    chosen: bool
    note: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, technique: _Optional[str] = ..., artifact: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., format: _Optional[str] = ..., size_bytes: _Optional[int] = ..., gzip_size_bytes: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p90_ms: _Optional[float] = ..., accuracy: _Optional[float] = ..., agreement: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., within_budget: _Optional[bool] = ..., chosen: _Optional[bool] = ..., note: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OptimizeResult(_message.Message):
    __slots__ = ("artifact", "chosen_technique", "baseline", "candidates", "reason")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    artifact: _artifacts_pb2.ArtifactRef
    chosen_technique: str
    baseline: CandidateReport
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateReport]
    reason: str
    def __init__(self, artifact: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., chosen_technique: _Optional[str] = ..., baseline: _Optional[_Union[CandidateReport, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[CandidateReport, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message", "details", "parity")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details: _containers.ScalarMap[str, str]
    parity: ParityReport
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., parity: _Optional[_Union[ParityReport, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "stage", "progress", "message", "cached", "convert_result", "optimize_result", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CONVERT_RESULT_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZE_RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stage: str
    progress: float
    message: str
    cached: bool
    convert_result: ConvertResult
    optimize_result: OptimizeResult
    error: JobError
    def __init__(self, job_id: _Optional[str] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., cached: _Optional[bool] = ..., convert_result: _Optional[_Union[ConvertResult, _Mapping]] = ..., optimize_result: _Optional[_Union[OptimizeResult, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...
