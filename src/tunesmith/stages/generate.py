"""The generate and chat verbs: complete prompts with a model, or talk to it in the terminal."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from .. import ui
from ..config import Section
from ..errors import UsageError
from ..evaluate.generate import generate
from ..models import ModelConfig, load_model_and_tokenizer


class SamplingOptions(Section):
    """The model and how it samples (greedy by default)."""

    model: ModelConfig = Field(ModelConfig(), description="bundled name, model directory (e.g. RUN/model), "
                                                          ".gguf file or hub id")
    system: str | None = Field(None, description="system prompt")
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0


class GenerateConfig(SamplingOptions):
    """`tunesmith generate --prompt TEXT ... | --file PROMPTS.txt`."""

    prompt: list[str] = Field([], description="a prompt (repeatable)")
    file: str | None = Field(None, description="a UTF-8 text file with one prompt per line")
    batch_size: int = Field(16, ge=1)


class ChatConfig(SamplingOptions):
    """`tunesmith chat`."""


def read_prompts(path: str) -> list[str]:
    """The non-blank lines of a prompts file; a missing, unreadable, non-text or empty file is one clear
    message (checked before any model loads)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UsageError(f"--file {path} is a folder; give a UTF-8 text file with one prompt per line")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--file {path}: no such file; give a UTF-8 text file with one prompt per line") from None
    except OSError as exc:
        raise UsageError(f"--file {path} cannot be read ({exc.strerror or exc}); check its permissions, or "
                         "give another file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(f"--file {path}:{line}: not UTF-8 text (byte {exc.start}, column {column}: "
                         f"{data[exc.start:exc.start + 1]!r}); save the file as UTF-8") from None
    prompts = [ln for ln in text.removeprefix("\ufeff").splitlines() if ln.strip()]
    if not prompts:
        raise UsageError(f"--file {path} holds no prompt (only blank lines); write one prompt per line")
    return prompts


def _with_system(cfg: SamplingOptions, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": cfg.system}] if cfg.system else []) + messages


def run_generate(cfg: GenerateConfig) -> int:
    """The `generate` verb: one completion per prompt on stdout."""
    prompts = list(cfg.prompt) + (read_prompts(cfg.file) if cfg.file else [])  # before the model loads
    if not prompts:
        raise UsageError("give --prompt TEXT (repeatable) or --file PROMPTS.txt (one prompt per line)")
    model, tokenizer = load_model_and_tokenizer(cfg.model, log=ui.log)
    convs = [_with_system(cfg, [{"role": "user", "content": p}]) for p in prompts]
    outs = generate(model, tokenizer, convs, cfg.max_new_tokens, batch_size=cfg.batch_size,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    for p, o in zip(prompts, outs):
        print(o if len(prompts) == 1 else f"### {p}\n{o}\n")
    return 0


def run_chat(cfg: ChatConfig) -> int:
    """The `chat` verb: a terminal conversation (empty line or Ctrl-D ends it, /reset clears it)."""
    model, tokenizer = load_model_and_tokenizer(cfg.model, log=ui.log)
    history: list[dict[str, str]] = _with_system(cfg, [])
    print("chat: empty line or Ctrl-D to quit, /reset to clear the history")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        if text == "/reset":
            history = _with_system(cfg, [])
            continue
        history.append({"role": "user", "content": text})
        reply = generate(model, tokenizer, [history], cfg.max_new_tokens, temperature=cfg.temperature,
                         top_p=cfg.top_p, seed=cfg.seed)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")
    return 0
