"""Every error code the service answers with, in one place."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(Enum):
    """A stable machine-readable code with its HTTP status and default message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.default_message = message

    @property
    def code(self) -> str:
        return self.name.lower()

    # 400: the request itself is wrong
    INVALID_REQUEST = (400, "The request is invalid.")
    INVALID_JSON = (400, "The request body is not valid JSON.")
    VALIDATION_ERROR = (400, "A field failed validation.")
    INVALID_CURSOR = (400, "The cursor is invalid or belongs to another query.")
    IDEMPOTENCY_KEY_REQUIRED = (400, "An idempotency key is required.")
    METER_IDENTIFIER_REQUIRED = (400, "Provide meterId or meterName.")
    # 401 / 403: who is asking
    UNAUTHORIZED = (401, "A valid API key is required.")
    INSUFFICIENT_SCOPE = (403, "The API key lacks the scope this operation needs.")
    FORBIDDEN = (403, "The API key may not access this organization.")
    PLAN_LIMIT_EXCEEDED = (403, "The organization's plan does not allow this.")
    LICENSE_REQUIRED = (403, "The organization's plan lacks the metered-usage feature.")
    # 404: what was named does not exist (for this caller)
    NOT_FOUND = (404, "The resource was not found.")
    PLAN_NOT_FOUND = (404, "No plan has this id.")
    METER_NOT_FOUND = (404, "No meter has this identifier.")
    SERVICE_LINE_NOT_FOUND = (404, "No service line with this id belongs to the organization.")
    CUSTOMER_NOT_FOUND = (404, "No customer with this id is readable with this key.")
    # 405: the path exists, the method does not
    METHOD_NOT_ALLOWED = (405, "This path does not serve this method.")
    # 409 / 413 / 415 / 422: the request cannot be applied as sent
    IDEMPOTENCY_CONFLICT = (409, "The idempotency key was used with a different payload.")
    SERVICE_LINE_INACTIVE = (409, "The service line is not active.")
    METER_ARCHIVED = (422, "The meter is archived and accepts no usage.")
    METER_NOT_PERMITTED = (422, "The service line's billing model does not permit this meter.")
    PAYLOAD_TOO_LARGE = (413, "The request body is too large.")
    # Corrections (voids and adjustments; docs/architecture.md, "Corrections")
    CORRECTION_NOT_VOIDABLE = (
        409,
        "Voids and adjustments are corrections and cannot be voided; post an adjustment that offsets one instead.",
    )
    EVENT_VOIDED = (409, "The event is voided; it takes no adjustment.")
    METER_NOT_ADJUSTABLE = (
        422,
        "Only sum meters take quantity adjustments; void the wrong event and report the right one instead.",
    )
    # 429 / 5xx
    RATE_LIMITED = (429, "The organization has used its API calls for this month.")
    INTERNAL_ERROR = (500, "An internal error occurred.")
    SERVICE_UNAVAILABLE = (503, "The service is temporarily unavailable; retry.")


class MeteringError(Exception):
    """The one error type of the service: a code, a message and optional details."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.error_code = code
        self.message = message or code.default_message
        self.field = field
        self.details = details or {}
        super().__init__(f"{code.code}: {self.message}")

    @property
    def http_status(self) -> int:
        return self.error_code.status

    @property
    def code(self) -> str:
        return self.error_code.code

    def to_dict(self) -> dict[str, Any]:
        """The body of the native error envelope, without the request id."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.details)
        return body


def validation_error(field: str, message: str) -> MeteringError:
    """A 400 naming the field that failed."""
    return MeteringError(ErrorCode.VALIDATION_ERROR, f"{field}: {message}", field=field)
