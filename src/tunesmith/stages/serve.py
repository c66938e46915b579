"""The serve verb: `tunesmith serve MODEL_OR_RUN` answers OpenAI-compatible HTTP requests.

Safe by default: it binds 127.0.0.1; a host other machines can reach needs an API key
(--api-key-file or $TUNESMITH_API_KEY), checked before the model loads. Every request is bounded
(see serve.limits). SIGINT/SIGTERM stop accepting, let requests in flight finish for up to
--grace seconds, then stop the engine.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Literal

from pydantic import Field

from .. import ui
from ..config import Section
from ..generation.engine import Engine
from ..models import ModelConfig, load_model_and_tokenizer
from ..serve.app import create_app
from ..serve.auth import check_exposure, load_keys
from ..serve.limits import Limits
from ..serve.server import bind, make_server, serve_beside
from .evaluate import is_run_dir


class Listen(Section):
    """What is served, where, and who may call it."""

    model: ModelConfig = Field(ModelConfig(), description="run directory (serves RUN/model), model directory, "
                                                          ".gguf file, quantized export folder or bundled name")
    host: str = Field("127.0.0.1", description="address to listen on; anything but loopback needs an API key")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    api_key_file: str | None = Field(None, description="file with the accepted API keys, one per line (also: "
                                                       "$TUNESMITH_API_KEY)")
    served_model_name: str | None = Field(None, description="the model id clients send and /v1/models lists "
                                                            "(default: the model's folder or file name)")
    grace: float = Field(10.0, ge=0, description="seconds requests in flight may take to finish on SIGINT/SIGTERM")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="server log level (info logs every request)")


class ServeConfig(Limits, Listen):
    """`tunesmith serve MODEL_OR_RUN [--host 127.0.0.1] [--port 8000] [--api-key-file F]`: Listen's fields,
    then the request limits."""


def served_model(cfg: ServeConfig) -> tuple[ModelConfig, str]:
    """(model to load, id it is served as): a run directory serves RUN/model under the run's name."""
    name = cfg.model.name
    model = cfg.model
    if is_run_dir(name):
        model = cfg.model.model_copy(update={"name": str(Path(name) / "model")})
    path = Path(name).expanduser()
    path = path.resolve() if path.exists() else path
    default = path.stem if path.suffix == ".gguf" else path.parent.name if path.name == "model" else path.name
    return model, cfg.served_model_name or default or name


def run_serve(cfg: ServeConfig) -> int:
    """The `serve` verb: check the keys and the address, load the model, start the engine, answer
    until SIGINT/SIGTERM."""
    keys = load_keys(cfg.api_key_file)
    check_exposure(cfg.host, keys)  # before anything slow
    model_cfg, model_id = served_model(cfg)
    with closing(bind(cfg.host, cfg.port)) as sock:
        model, tokenizer = load_model_and_tokenizer(model_cfg, log=ui.log)
        engine = Engine(model.eval(), tokenizer, max_batch=cfg.max_concurrent, max_queue=cfg.max_queue)
        limits = Limits(**{k: getattr(cfg, k) for k in Limits.model_fields})
        context = getattr(model.config, "max_position_embeddings", None)
        app = create_app(engine, tokenizer, model_id, limits, keys, context)
        server = make_server(app, cfg.host, cfg.port, cfg.grace, cfg.log_level)
        ui.log(f"serving [bold]{model_id}[/] on http://{cfg.host}:{cfg.port}/v1 "
               f"({'API key required' if keys else 'no API key: this machine only'}); Ctrl-C stops")
        try:
            serve_beside(server, [sock], engine.run)  # the engine steps in this thread, HTTP beside it
        finally:
            engine.shutdown(cfg.grace)
    ui.log(f"stopped{f' ({server.stopped_by})' if server.stopped_by else ''}; "
           f"{engine.stats().requests_finished} generation requests answered")
    return 0
