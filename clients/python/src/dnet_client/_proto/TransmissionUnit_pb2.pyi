from . import ComputationMessage_pb2 as _ComputationMessage_pb2
from . import QstatusMessage_pb2 as _QstatusMessage_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
