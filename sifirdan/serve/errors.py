"""Errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status.

The ``openai`` client turns the status into its exception type (400 ``BadRequestError``, 401
``AuthenticationError``, 404 ``NotFoundError``, 413 ``APIStatusError``, 429 ``RateLimitError``, 5xx
``InternalServerError``) and shows ``message``.
"""

from __future__ import annotations

import json


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def dumps(obj) -> bytes:
    """Compact UTF-8 JSON. Generated text can hold a lone surrogate (``tokenizer.decode`` keeps invalid bytes
    ED A0..BF xx as one, see sifirdan/tokenizer/base.py), which UTF-8 cannot encode: such a document is sent
    with \\u escapes instead, so the client still gets exactly the decoded text."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
