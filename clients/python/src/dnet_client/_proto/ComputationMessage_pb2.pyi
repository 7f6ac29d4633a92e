from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputationRequest(_message.Message):
    __slots__ = ("start_layer", "x", "thresholds", "attempts", "shadow", "shadow_rate")
    START_LAYER_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_RATE_FIELD_NUMBER: _ClassVar[int]
    start_layer: int
    x: bytes
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    attempts: int
    shadow: bool
    shadow_rate: float
    def __init__(self, start_layer: _Optional[int] = ..., x: _Optional[bytes] = ..., thresholds: _Optional[_Iterable[float]] = ..., attempts: _Optional[int] = ..., shadow: _Optional[bool] = ..., shadow_rate: _Optional[float] = ...) -> None: ...

class HopRecord(_message.Message):
    __slots__ = ("unit", "start_layer", "exit_layer", "queue_wait_us", "compute_us", "total_us", "batch_size", "threshold")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    START_LAYER_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    unit: str
    start_layer: int
    exit_layer: int
    queue_wait_us: int
    compute_us: int
    total_us: int
    batch_size: int
    threshold: float
    def __init__(self, unit: _Optional[str] = ..., start_layer: _Optional[int] = ..., exit_layer: _Optional[int] = ..., queue_wait_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ..., threshold: _Optional[float] = ...) -> None: ...

class ComputationResponse(_message.Message):
    __slots__ = ("status", "error_message", "result", "next_request", "exit_layer", "confidence", "hops", "answered", "degraded", "shadow", "shadow_rows")
    class StatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ERROR: _ClassVar[ComputationResponse.StatusCode]
        SUCCESS: _ClassVar[ComputationResponse.StatusCode]
        NOT_SUCCESS: _ClassVar[ComputationResponse.StatusCode]
    ERROR: ComputationResponse.StatusCode
    SUCCESS: ComputationResponse.StatusCode
    NOT_SUCCESS: ComputationResponse.StatusCode
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    NEXT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    EXIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    status: ComputationResponse.StatusCode
    error_message: str
    result: bytes
    next_request: ComputationRequest
    exit_layer: int
    confidence: float
    hops: _containers.RepeatedCompositeFieldContainer[HopRecord]
    answered: bytes
    degraded: bool
    shadow: ComputationRequest
    shadow_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, status: _Optional[_Union[ComputationResponse.StatusCode, str]] = ..., error_message: _Optional[str] = ..., result: _Optional[bytes] = ..., next_request: _Optional[_Union[ComputationRequest, _Mapping]] = ..., exit_layer: _Optional[int] = ..., confidence: _Optional[float] = ..., hops: _Optional[_Iterable[_Union[HopRecord, _Mapping]]] = ..., answered: _Optional[bytes] = ..., degraded: _Optional[bool] = ..., shadow: _Optional[_Union[ComputationRequest, _Mapping]] = ..., shadow_rows: _Optional[_Iterable[int]] = ...) -> None: ...
