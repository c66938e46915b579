"""The tokenizer half of a GGUF file: a byte-level BPE ("gpt2") vocabulary as llama.cpp reads it.

llama.cpp re-implements each model family's pre-tokenizer (the regex split before BPE) and picks
it by the name in `tokenizer.ggml.pre`. llama.cpp's converter finds that name by tokenizing a fixed
check text and hashing the ids; a tokenizer whose hash is not in its table is refused, because a
wrong pre-tokenizer silently changes how prompts are split. We do the same with a small table of
hashes taken from llama.cpp's `convert_hf_to_gguf.py` (`get_vocab_base_pre`), and refuse unknown
ones rather than guess.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..errors import UserError

# The check text of llama.cpp's converter, verbatim: whitespace runs, emoji, digit runs, scripts,
# contractions. The ids it encodes to depend on the pre-tokenizer (and the vocabulary).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(tokenizer.encode(CHECK_TEXT))) -> llama.cpp's pre-tokenizer name, for tokenizers of
# models whose tensors we can map (Llama-layout). Values copied from llama.cpp's table; the smollm
# entry is also checked against the bundled SmolLM2 tokenizer by the tests.
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3.x
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",      # GPT-2 vocabulary
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",     # Mistral Nemo
}


@dataclass
class Vocab:
    """Everything the GGUF tokenizer keys hold."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def check_hash(tokenizer) -> str:
    """The hash llama.cpp's converter keys its pre-tokenizer table on."""
    return hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def detect_pre_tokenizer(tokenizer, where: str = "") -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer; UserError when it is not a known one."""
    chkhsh = check_hash(tokenizer)
    name = KNOWN_PRE_TOKENIZERS.get(chkhsh)
    if name is None:
        known = ", ".join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))
        raise UserError(
            f"the tokenizer{f' in {where}' if where else ''} has a pre-tokenizer this exporter does not know "
            f"(check hash {chkhsh}); known: {known}. Writing a guessed `tokenizer.ggml.pre` would make "
            "llama.cpp split prompts differently from the model's own tokenizer, so nothing was written. "
            "If you know llama.cpp's name for it, pass pre_tokenizer=NAME")
    return name


def _bpe_model(tokenizer, where: str) -> dict[str, Any]:
    """The tokenizers-library JSON of a byte-level BPE tokenizer; UserError for other kinds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"the tokenizer in {where} has no fast (tokenizers) backend; GGUF export needs tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
    if model.get("type") != "BPE" or not byte_level:
        kind = model.get("type", "unknown")
        if model.get("byte_fallback") or "Metaspace" in json.dumps(spec.get("pre_tokenizer")):
            kind += " (SentencePiece-style)"
        raise UserError(f"the tokenizer in {where} is {kind}; GGUF export supports byte-level BPE (GPT-2 style, "
                        "tokenizer.ggml.model = gpt2) tokenizers only, such as SmolLM2's and Llama 3's")
    return model


def _merges(model: dict[str, Any]) -> list[str]:
    merges = model.get("merges") or []
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        else:  # [left, right] pairs (tokenizers >= 0.20): a space inside a part is written as U+0120, as llama.cpp does
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m))
    return out


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _adds(tokenizer, bos: int | None, eos: int | None) -> tuple[bool, bool]:
    """Whether plain `tokenizer(text)` puts BOS first / EOS last: the behaviour, not a config flag."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) - len(plain)
    add_bos = extra > 0 and bos is not None and full[0] == bos and plain[:1] != [bos]
    add_eos = extra > 0 and eos is not None and full[-1] == eos and plain[-1:] != [eos]
    return add_bos, add_eos


def build_vocab(tokenizer, config: dict[str, Any], vocab_size: int, where: str = "",
                pre_tokenizer: str | None = None) -> Vocab:
    """The GGUF vocabulary of a Hugging Face fast tokenizer, padded to the model's `vocab_size`."""
    model = _bpe_model(tokenizer, where)
    pre = pre_tokenizer or detect_pre_tokenizer(tokenizer, where)
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer in {where} has token id {max(vocab.values())}, beyond the model's "
                        f"vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tok = added[i]
            tokens.append(tok.content)
            special = getattr(tok, "special", False) or _looks_special(tok.content)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    # Special ids: the tokenizer's first, then config.json's (as llama.cpp's SpecialVocab does).
    special = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is None:
            tid = config.get(f"{kind}_token_id")
            if isinstance(tid, list):
                tid = tid[0] if tid else None
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            special[kind] = tid
    add_bos, add_eos = _adds(tokenizer, special.get("bos"), special.get("eos"))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one is what chat front ends use
        template = template.get("default")
    return Vocab(tokens=tokens, token_types=[int(t) for t in types], merges=_merges(model), pre=pre,
                 special_ids=special, add_bos=add_bos, add_eos=add_eos, chat_template=template or None)


def load_vocab(model_dir: Path, config: dict[str, Any], vocab_size: int,
               pre_tokenizer: str | None = None) -> Vocab:
    """Load the model folder's tokenizer with transformers and build its GGUF vocabulary."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer in {model_dir}: {str(exc).splitlines()[0]}") from None
    return build_vocab(tokenizer, config, vocab_size, where=str(model_dir), pre_tokenizer=pre_tokenizer)


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Write the tokenizer keys."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, tid in vocab.special_ids.items():
        getattr(writer, {"unk": "add_unk_token_id", "pad": "add_pad_token_id"}.get(kind, f"add_{kind}_token_id"))(tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
