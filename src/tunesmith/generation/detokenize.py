"""From generated token ids to final text, one token at a time: incremental detokenization, and stop
strings whose possible beginnings are held back until they can no longer match.

The concatenated output of `Detokenizer` equals `tokenizer.decode(all_ids, skip_special_tokens=True)`
for byte-level BPE and SentencePiece tokenizers: each step decodes a short window of ids that starts
at a character boundary, and text ending in an unfinished UTF-8 character ("\\ufffd") waits for the
next token (the method of vLLM and TGI).
"""

from __future__ import annotations


class Detokenizer:
    """Turns ids into text increments; without a tokenizer every increment is ""."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: a character boundary
        self.read = 0  # ids up to here have been turned into text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def push(self, token_id: int) -> str:
        """Append one id; return the text it completes (may be "" while a character is unfinished)."""
        self.ids.append(token_id)
        if self.tokenizer is None:
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """The text of ids not yet turned into text (an unfinished character decodes as "\\ufffd")."""
        if self.tokenizer is None or self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]


class StopMatcher:
    """Releases text as soon as it cannot be part of a stop string; reports the first stop string.

    Text that could still be the start of a stop string is held back. On a match, everything before
    the match is released, the stop string and whatever follows it are dropped, and `matched` is set.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.matched = False

    def feed(self, text: str) -> str:
        """Add text; return what is now final."""
        if not self.stops:
            return text
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held, self.matched = "", True
            return buf[:min(hits)]
        keep = 0  # the longest tail of buf that some stop string starts with
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        """The held text, released because the completion ends without a match."""
        out, self.held = self.held, ""
        return out
