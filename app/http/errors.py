"""The API's errors as values: one class per error code of the contract.

Each error knows its code, HTTP status, structured data and the headers it
needs; its message is built only from that data. Handlers raise or return
these; one error handler in the server turns them into JSON responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar


class ApiError(Exception):
    """Base of every user-visible error."""

    code: ClassVar[str] = "internal_failure"
    status: ClassVar[int] = 500

    @property
    def message(self) -> str:
        raise NotImplementedError

    @property
    def data(self) -> Any:
        return None

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        data = self.data
        if data is not None:
            body["data"] = data
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class ParamProblem:
    """One invalid parameter (or group of parameters) and what is wrong with it."""

    params: tuple[str, ...]
    message: str


class InvalidRequest(ApiError):
    code = "invalid_request"
    status = 400

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def message(self) -> str:
        return f"The request could not be read: {self.reason}."

    @property
    def data(self) -> Any:
        return {"reason": self.reason}


class InvalidParams(ApiError):
    code = "invalid_params"
    status = 400

    def __init__(self, problems: list[ParamProblem]):
        super().__init__(problems)
        self.problems = sorted(problems, key=lambda p: p.params)

    @classmethod
    def one(cls, param: str, message: str) -> InvalidParams:
        return cls([ParamProblem((param,), message)])

    @property
    def message(self) -> str:
        return " ".join(
            f"Parameter {', '.join(f'`{p}`' for p in problem.params)} {problem.message}."
            for problem in self.problems
        )

    @property
    def data(self) -> Any:
        return [{"params": list(p.params), "message": p.message} for p in self.problems]


class AuthRequired(ApiError):
    code = "auth_required"
    status = 401

    @property
    def message(self) -> str:
        return "This endpoint requires a bearer token in the Authorization header."

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class AuthInvalid(ApiError):
    code = "auth_invalid"
    status = 401

    @property
    def message(self) -> str:
        return "The bearer token is not valid."

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class NotFound(ApiError):
    code = "not_found"
    status = 404

    @property
    def message(self) -> str:
        return "The requested resource does not exist."


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"
    status = 405

    def __init__(self, allowed: list[str]):
        super().__init__(allowed)
        self.allowed = sorted(allowed)

    @property
    def message(self) -> str:
        return f"This endpoint only allows {', '.join(self.allowed)}."

    @property
    def data(self) -> Any:
        return {"allowed": self.allowed}

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class ActionNotAllowed(ApiError):
    code = "action_not_allowed"
    status = 409

    def __init__(self, action: str):
        super().__init__(action)
        self.action = action

    @property
    def message(self) -> str:
        return f"You may not {self.action}."

    @property
    def data(self) -> Any:
        return {"action": self.action}


class IdempotencyKeyInUse(ApiError):
    code = "idempotency_key_in_use"
    status = 409

    @property
    def message(self) -> str:
        return "A request with this idempotency key is still being processed; retry later."


class IdempotencyKeyReused(ApiError):
    code = "idempotency_key_reused"
    status = 422

    @property
    def message(self) -> str:
        return ("This idempotency key was already used with a different method, "
                "path or parameters.")


class PayloadTooLarge(ApiError):
    code = "payload_too_large"
    status = 413

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self.max_bytes = max_bytes

    @property
    def message(self) -> str:
        return f"The request body must not exceed {self.max_bytes} bytes."

    @property
    def data(self) -> Any:
        return {"max_bytes": self.max_bytes}


class UnsupportedMediaType(ApiError):
    code = "unsupported_media_type"
    status = 415

    SUPPORTED: ClassVar[list[str]] = ["application/json", "application/x-www-form-urlencoded"]

    @property
    def message(self) -> str:
        return f"The request body must be one of: {', '.join(self.SUPPORTED)}."

    @property
    def data(self) -> Any:
        return {"supported": list(self.SUPPORTED)}


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class RateLimited(ApiError):
    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: float):
        super().__init__(retry_after)
        self.retry_after = _whole_seconds(retry_after)

    @property
    def message(self) -> str:
        return f"Too many requests; retry after {self.retry_after} seconds."

    @property
    def data(self) -> Any:
        return {"retry_after": self.retry_after}

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalFailure(ApiError):
    code = "internal_failure"
    status = 500

    @property
    def message(self) -> str:
        return "An internal error occurred; it has been logged under this request's id."


class ServiceUnavailable(ApiError):
    code = "service_unavailable"
    status = 503

    def __init__(self, retry_after: float = 1):
        super().__init__(retry_after)
        self.retry_after = _whole_seconds(retry_after)

    @property
    def message(self) -> str:
        return (f"The service is temporarily unavailable; retry after "
                f"{self.retry_after} seconds.")

    @property
    def data(self) -> Any:
        return {"retry_after": self.retry_after}

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


ALL_ERRORS: tuple[type[ApiError], ...] = (
    InvalidRequest, InvalidParams, AuthRequired, AuthInvalid, NotFound, MethodNotAllowed,
    ActionNotAllowed, IdempotencyKeyInUse, IdempotencyKeyReused, PayloadTooLarge,
    UnsupportedMediaType, RateLimited, InternalFailure, ServiceUnavailable,
)
