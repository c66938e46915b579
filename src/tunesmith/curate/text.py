"""What text curation looks at: normalised example text, tokens, and the stop words left out of shingles.

Three views of an Example are used:

* `exact_key(ex)`: the text the exact pass hashes. Every message becomes "role: content" after
  Unicode NFKC, lower-casing, collapsing every whitespace run to one space and stripping
  whitespace and punctuation at the two ends of the content. Punctuation *inside* a message is kept
  ("3, 5" and "35" differ), so only differences in case, spacing, Unicode form and a trailing
  "." / "!" / "?" (or a leading "¿", quotes...) are forgiven.
* `dedup_tokens(ex)`: the token stream near-duplicate shingles are built from: role markers
  ("<user>", "<assistant>", ...) followed by the message's word tokens. Tokens are runs of letters
  and digits plus single symbols such as "+", "-", "@"; plain punctuation (. , ; : ! ? quotes, brackets,
  em/en dashes) is dropped, and so are STOP_WORDS (see below) unless that would leave a message empty.
* `user_text(ex)` / `word_tokens(text)`: the user turns and the tokens decontamination compares
  with evaluation prompts (no stop-word removal: n-gram overlap is measured on the words as written).

Why stop words are left out of near-dup shingles: instruction data is short and templated. Two
*different* rows of one template ("What is 12 + 5?" / "What is 12 + 6?") differ in one or two
words, while a near-duplicate of a row differs from it by a polite prefix, a filler word or a
re-worded instruction verb ("Answer with" / "Reply with"). On ~15-word rows both change the same
number of word n-grams, so no shingle size or threshold separates them. Removing function words,
politeness/filler words and common instruction verbs makes the edits that do not change what is
asked invisible to the shingles, while every content word, number and symbol still counts.
"""

from __future__ import annotations

import re
import unicodedata
from tunesmith.data.example import Example

# Plain punctuation: dropped from token streams and stripped at the ends of messages for the exact key.
PUNCT = frozenset(".,;:!?'\"`()[]{}¿¡«»“”‘’…—–")  # em/en dashes; "-" stays (it is also minus)
_EDGE = "".join(sorted(PUNCT)) + " "
_TOKEN = re.compile(r"[^\W_]+|[^\w\s]")
_SPACE = re.compile(r"\s+")

# Function words, politeness / filler words, and instruction verbs that re-wordings swap freely.
_FUNCTION = """a an the and or but nor if then so as of to in on at by for with from into onto about
    over under than too very is are was were be been being am it its this that these those there here
    what which who whom whose how many much some any all each every both either neither do does did
    done can could would should will shall may might must i me my mine you your yours we us our ours
    he him his she her they them their s t""".split()
_POLITE = """please kindly thanks thank thx hi hello hey dear greetings ok okay just simply now only
    exactly quickly briefly also really""".split()
_INSTRUCTION_VERBS = """answer reply respond response give provide return output tell state write
    print show""".split()
STOP_WORDS: frozenset[str] = frozenset(_FUNCTION + _POLITE + _INSTRUCTION_VERBS)


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, punctuation and spaces stripped at the ends."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", text).strip(_EDGE)


def exact_key(ex: Example) -> str:
    """The normalised, role-tagged text whose hash the exact pass compares."""
    return "\n".join(f"{m.get('role', '')}: {normalize(str(m.get('content', '')))}" for m in ex.messages)


def word_tokens(text: str) -> list[str]:
    """NFKC + lower-cased word tokens (letters/digits runs and single symbols), plain punctuation dropped."""
    return [t for t in _TOKEN.findall(unicodedata.normalize("NFKC", text).lower()) if t not in PUNCT]


def dedup_tokens(ex: Example, stop_words: frozenset[str] | None = STOP_WORDS) -> list[str]:
    """Role markers and content tokens of every message (see the module docstring)."""
    out: list[str] = []
    for m in ex.messages:
        out.append(f"<{m.get('role', '')}>")  # cannot collide with a word token: "<" is a token of its own
        toks = word_tokens(str(m.get("content", "")))
        if stop_words:
            kept = [t for t in toks if t not in stop_words]
            toks = kept or toks  # a message made only of stop words keeps them, so it is not empty
        out.extend(toks)
    return out


def dedup_string(ex: Example, stop_words: frozenset[str] | None = STOP_WORDS) -> str:
    """`dedup_tokens` joined by spaces: the text character shingles are taken from."""
    return " ".join(dedup_tokens(ex, stop_words))


def user_text(ex: Example) -> str:
    """The user turns of a conversation, joined by newlines (what decontamination checks)."""
    return "\n".join(str(m.get("content", "")) for m in ex.messages if m.get("role") == "user")


def where(ex: Example) -> str:
    """source:line of an example, for reports."""
    return f"{ex.source}:{ex.line}"
