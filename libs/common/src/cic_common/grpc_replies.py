"""Helpers for ``grpc.aio`` servicers: ending a call with a status, and reply timestamps."""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the call with ``code`` and ``message``; never returns."""
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # it always raises AbortError


def stamp(moment: datetime | None) -> Timestamp | None:
    """``moment`` as a protobuf Timestamp (None stays None: the field is left unset)."""
    if moment is None:
        return None
    found = Timestamp()
    found.FromDatetime(moment)
    return found
