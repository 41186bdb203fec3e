from saliency.v1 import explainer_pb2 as _explainer_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandlerReply(_message.Message):
    __slots__ = ("code", "message", "response", "logits", "batch_rows", "handler_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    HANDLER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response: _explainer_pb2.ExplainResponse
    logits: _explainer_pb2.Tensor
    batch_rows: int
    handler_ms: float
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response: _Optional[_Union[_explainer_pb2.ExplainResponse, _Mapping]] = ..., logits: _Optional[_Union[_explainer_pb2.Tensor, _Mapping]] = ..., batch_rows: _Optional[int] = ..., handler_ms: _Optional[float] = ...) -> None: ...
