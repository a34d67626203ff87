from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    COMPLEX64: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
COMPLEX64: DType
FLOAT32: DType

class SliceHeader(_message.Message):
    __slots__ = ("slice_index", "coils", "readout", "phase", "dtype", "mask", "recon_height", "recon_width", "model", "alpha", "request_id", "payload_bytes")
    SLICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    COILS_FIELD_NUMBER: _ClassVar[int]
    READOUT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    RECON_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RECON_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    slice_index: int
    coils: int
    readout: int
    phase: int
    dtype: DType
    mask: bytes
    recon_height: int
    recon_width: int
    model: str
    alpha: float
    request_id: str
    payload_bytes: int
    def __init__(self, slice_index: _Optional[int] = ..., coils: _Optional[int] = ..., readout: _Optional[int] = ..., phase: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., mask: _Optional[bytes] = ..., recon_height: _Optional[int] = ..., recon_width: _Optional[int] = ..., model: _Optional[str] = ..., alpha: _Optional[float] = ..., request_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class KspaceChunk(_message.Message):
    __slots__ = ("slice_index", "seq", "data", "crc32", "last")
    SLICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    slice_index: int
    seq: int
    data: bytes
    crc32: int
    last: bool
    def __init__(self, slice_index: _Optional[int] = ..., seq: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SliceHeader
    chunk: KspaceChunk
    def __init__(self, header: _Optional[_Union[SliceHeader, _Mapping]] = ..., chunk: _Optional[_Union[KspaceChunk, _Mapping]] = ...) -> None: ...

class SliceRequest(_message.Message):
    __slots__ = ("header", "data", "crc32")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    header: SliceHeader
    data: bytes
    crc32: int
    def __init__(self, header: _Optional[_Union[SliceHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class SliceError(_message.Message):
    __slots__ = ("code", "code_name", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    code_name: str
    reason: str
    def __init__(self, code: _Optional[int] = ..., code_name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SliceResult(_message.Message):
    __slots__ = ("slice_index", "request_id", "image", "error", "alpha", "model_name", "model_version", "queue_ms", "compute_ms", "dc_residual", "batch_size", "server_ms")
    SLICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    DC_RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    slice_index: int
    request_id: str
    image: Image
    error: SliceError
    alpha: float
    model_name: str
    model_version: str
    queue_ms: float
    compute_ms: float
    dc_residual: float
    batch_size: int
    server_ms: float
    def __init__(self, slice_index: _Optional[int] = ..., request_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., error: _Optional[_Union[SliceError, _Mapping]] = ..., alpha: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., dc_residual: _Optional[float] = ..., batch_size: _Optional[int] = ..., server_ms: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "version", "uri", "alphas", "continuous", "preset", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ALPHAS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    uri: str
    alphas: _containers.RepeatedScalarFieldContainer[float]
    continuous: bool
    preset: str
    sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., uri: _Optional[str] = ..., alphas: _Optional[_Iterable[float]] = ..., continuous: _Optional[bool] = ..., preset: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("requested_providers", "providers", "provider_fallback", "onnxruntime_version", "max_batch", "max_queue", "max_chunk_bytes", "max_message_bytes", "model_name", "model_version", "server_version")
    REQUESTED_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    requested_providers: _containers.RepeatedScalarFieldContainer[str]
    providers: _containers.RepeatedScalarFieldContainer[str]
    provider_fallback: bool
    onnxruntime_version: str
    max_batch: int
    max_queue: int
    max_chunk_bytes: int
    max_message_bytes: int
    model_name: str
    model_version: str
    server_version: str
    def __init__(self, requested_providers: _Optional[_Iterable[str]] = ..., providers: _Optional[_Iterable[str]] = ..., provider_fallback: _Optional[bool] = ..., onnxruntime_version: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., server_version: _Optional[str] = ...) -> None: ...
