"""Every error the service answers, mapped to its status and JSON body in this one place.

Every 4xx and 5xx has the body ``{"error": {"type": ..., "message": ...}}`` (``ErrorBody``)::

    NotFound                              404  an unknown batcher or dead letter
    InvalidItem, InvalidKey, ConfigError  422  bad input; nothing was stored
    a request that does not validate      422  type "ValidationError", with "details"
    a body that is not UTF-8 JSON         422  type "ValidationError"
    RulesChanged (three times running)    409  the batcher's rules keep changing: retry
    StoreUnavailable                      503  the store is down or refuses writes: retry
    any other RedbatchError               502  the store answered with an error
    Unauthorized                          401  a mutating request without the right token
    NotReady                              503  /readyz: the store or the worker is not up
    BodyTooLarge                          413  the body is over the size limit
    Starlette's own (no route, method)    their status: 404, 405, ...

A bad request is never a 500: only a bug is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from redbatch.errors import ConfigError, InvalidItem, InvalidKey, NotFound, RedbatchError, StoreUnavailable
from redbatch.service.models import ErrorBody
from redbatch.stores.base import RulesChanged

STATUS_OF: tuple[tuple[type[RedbatchError], int], ...] = (
    (NotFound, 404),
    (InvalidItem, 422),
    (InvalidKey, 422),
    (ConfigError, 422),
    (RulesChanged, 409),
    (StoreUnavailable, 503),
    (RedbatchError, 502),
)
"""The status of each RedbatchError, first match wins."""

RETRY_AFTER = "1"
"""Seconds a client is told to wait before retrying a 503."""


class Unauthorized(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})


class NotReady(HTTPException):
    def __init__(self, message: str) -> None:
        super().__init__(503, message, headers={"Retry-After": RETRY_AFTER})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit} byte limit")


def error_response(
    status: int,
    kind: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def status_of(exc: RedbatchError) -> int:
    return next(status for kind, status in STATUS_OF if isinstance(exc, kind))


async def _redbatch_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RedbatchError)
    status = status_of(exc)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return error_response(status, type(exc).__name__, str(exc), headers=headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: an error's "input" may be a megabyte of item, its "ctx" objects
    # that JSON cannot hold.
    details = [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(422, "ValidationError", message, details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # Starlette's Allow names the methods of the first route whose path matched; a path
        # served by several routes (GET and POST /jobs/{queue}) has the methods of all.
        allowed = sorted({m for route in request.app.router.routes for m in _methods_at(route, request)})
        return error_response(405, "MethodNotAllowed", str(exc.detail), headers={"Allow": ", ".join(allowed)})
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8): bad input, as any other
        # body that is not JSON, so the same 422.
        return error_response(422, "ValidationError", f"the request body is not JSON: {exc.detail}")
    kind = (
        type(exc).__name__
        if type(exc) is not HTTPException
        else _HTTP_KINDS.get(exc.status_code, "HTTPError")
    )
    return error_response(exc.status_code, kind, str(exc.detail), headers=exc.headers)


def _methods_at(route: BaseRoute, request: Request) -> set[str]:
    match, _ = route.matches({**request.scope, "method": "\x00"})  # no route has that method
    methods = getattr(route, "methods", None)
    return set(methods or ()) if match is not Match.NONE else set()


_HTTP_KINDS = {404: "NotFound", 405: "MethodNotAllowed"}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (404, "Unknown batcher or dead letter"),
        (413, "Request body over the size limit"),
        (422, "Invalid request, item or key; nothing was stored"),
        (502, "The store answered with an error"),
        (503, "The store cannot be reached or refuses writes"),
    )
}
"""The error responses every batcher route documents in the OpenAPI schema."""

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    409: {"model": ErrorBody, "description": "The batcher's rules kept changing; retry"},
}
"""What mutating routes add to ``ERROR_RESPONSES``."""


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RedbatchError, _redbatch_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
