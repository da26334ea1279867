"""What every route shares: one-line errors, JSON replies, and reading a body within its size limit."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hakuriver import protocol as p


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(p.encode(obj), status_code=status, media_type="application/json", headers=headers)


def error_response(message: str, status: int) -> Response:
    return json_response(p.ErrorReply(error=message), status)


async def read_body(request: Request, kind: type):  # noqa: ANN202 - an instance of `kind`
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > p.MAX_BODY_BYTES:
        raise BadRequest(f"request body too large (limit {p.MAX_BODY_BYTES} bytes)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > p.MAX_BODY_BYTES:
            raise BadRequest(f"request body too large (limit {p.MAX_BODY_BYTES} bytes)", 413)
        chunks.append(chunk)
    try:
        return p.decode(b"".join(chunks), kind)
    except p.DecodeError as exc:
        raise BadRequest(f"invalid {kind.__name__} body: {exc}") from None
