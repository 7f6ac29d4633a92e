"""DNet's Python client: classify images through a cascade of DNet units.

    from dnet_client import Client
    with Client("127.0.0.1:50060") as client:
        for answer in client.classify(images):  # uint8 N x 32 x 32 x 3
            print(answer.category, answer.exit_layer)
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    DeadlineExceeded,
    DNetError,
    InvalidArgument,
    NotAnswered,
    ResourceExhausted,
    Unavailable,
    UnitError,
)
from .images import Answer, Hop

__all__ = [
    "Answer",
    "AsyncClient",
    "Client",
    "DNetError",
    "DeadlineExceeded",
    "Hop",
    "InvalidArgument",
    "NotAnswered",
    "ResourceExhausted",
    "Unavailable",
    "UnitError",
]
