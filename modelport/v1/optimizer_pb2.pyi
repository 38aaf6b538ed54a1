from modelport.v1 import artifacts_pb2 as _artifacts_pb2
from modelport.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Goal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GOAL_UNSPECIFIED: _ClassVar[Goal]
    GOAL_LATENCY: _ClassVar[Goal]
    GOAL_SIZE: _ClassVar[Goal]
GOAL_UNSPECIFIED: Goal
GOAL_LATENCY: Goal
GOAL_SIZE: Goal

class AccuracyBudget(_message.Message):
    __slots__ = ("max_drop", "relative")
    MAX_DROP_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_FIELD_NUMBER: _ClassVar[int]
    max_drop: float
    relative: bool
    def __init__(self, max_drop: _Optional[float] = ..., relative: _Optional[bool] = ...) -> None: ...

class OptimizeRequest(_message.Message):
    __slots__ = ("model", "techniques", "goal", "budget", "calibration_data", "train_data", "eval_data", "execution_provider", "threads", "options", "student", "output_format", "trust_remote_code")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUES_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_DATA_FIELD_NUMBER: _ClassVar[int]
    TRAIN_DATA_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATA_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRUST_REMOTE_CODE_FIELD_NUMBER: _ClassVar[int]
    model: _artifacts_pb2.ArtifactRef
    techniques: _containers.RepeatedScalarFieldContainer[str]
    goal: Goal
    budget: AccuracyBudget
    calibration_data: _artifacts_pb2.ArtifactRef
    train_data: _artifacts_pb2.ArtifactRef
    eval_data: _artifacts_pb2.ArtifactRef
    execution_provider: str
    threads: int
    options: _containers.ScalarMap[str, str]
    student: _artifacts_pb2.ArtifactRef
    output_format: str
    trust_remote_code: bool
    def __init__(self, model: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., techniques: _Optional[_Iterable[str]] = ..., goal: _Optional[_Union[Goal, str]] = ..., budget: _Optional[_Union[AccuracyBudget, _Mapping]] = ..., calibration_data: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., train_data: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., eval_data: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., execution_provider: _Optional[str] = ..., threads: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., student: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., output_format: _Optional[str] = ..., trust_remote_code: _Optional[bool] = ...) -> None: ...
