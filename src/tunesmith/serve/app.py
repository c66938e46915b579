"""The FastAPI app: OpenAI-compatible routes on a running generation engine.

    POST /v1/chat/completions   messages -> chat template -> completion(s), JSON or SSE stream
    POST /v1/completions        prompt text (or token ids) -> completion(s), no chat template
    GET  /v1/models             the served model
    GET  /health                liveness, no key needed
    GET  /metrics               Prometheus text

Every route but /health needs an API key when the server has any. Every refusal is an OpenAI-style
error body (see apierror.py); an unexpected failure is a 500 with the same shape.
"""

from __future__ import annotations

import logging
import time

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..generation.engine import EngineClosed, QueueFull
from . import completions
from .apierror import APIError, error_body
from .auth import KeyCheck
from .limits import Admission, Limits
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("tunesmith.serve")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


def create_app(engine, tokenizer, model_id: str, limits: Limits | None = None, keys: list[str] | None = None,
               context: int | None = None) -> FastAPI:
    """The app over a started engine. keys: accepted API keys (none: no key asked);
    context: the model's context length (prompt + new tokens), if known."""
    limits = limits or Limits()
    metrics = Metrics()
    state = completions.State(engine, tokenizer, model_id, limits, Admission(limits), metrics, QueueFull,
                              EngineClosed, context)
    check_key = KeyCheck(keys or [])

    def authorized(request: Request) -> None:
        check_key(request.headers.get("authorization"))

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    _error_handlers(app)
    app.add_middleware(_Measure, metrics=metrics)
    guarded = [Depends(authorized)]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(model_id)]}

    @app.get("/v1/models/{name:path}", dependencies=guarded)
    async def model(name: str) -> dict:
        if name != model_id:
            raise APIError(404, f"the model '{name}' does not exist here; this server serves '{model_id}'",
                           "invalid_request_error", "model", "model_not_found")
        return _model_card(model_id)

    @app.get("/metrics", dependencies=guarded)
    async def metrics_text() -> Response:
        stats = engine.stats() if hasattr(engine, "stats") else None
        return Response(metrics.render(stats, state.admission.in_flight), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(request: Request) -> Response:
        return await completions.chat(state, request)

    @app.post("/v1/completions", dependencies=guarded)
    async def complete(request: Request) -> Response:
        return await completions.completions(state, request)

    return app


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tunesmith"}


def _error_handlers(app: FastAPI) -> None:
    """Every error answered in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        if exc.status_code in (404, 405):
            message += f" (this server answers {', '.join(ROUTES)})"
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()[0].get('msg')}", "invalid_request_error"),
                            status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return JSONResponse(error_body(f"internal server error ({type(exc).__name__})", "server_error"),
                            status_code=500)


class _Measure:
    """ASGI middleware: counts every response by route and status and times it to its last byte."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "/v1/models/{model}" if path.startswith("/v1/models/") else "other"
            self.metrics.request_done(route, status[0], time.perf_counter() - started)
