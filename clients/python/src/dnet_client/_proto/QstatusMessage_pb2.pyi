from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class QstatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QstatusResponse(_message.Message):
    __slots__ = ("qlength", "consumer")
    QLENGTH_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    qlength: int
    consumer: int
    def __init__(self, qlength: _Optional[int] = ..., consumer: _Optional[int] = ...) -> None: ...
