"""One completion being generated: its sampler, its text stream, and the events it sends.

Finishing rules: an end-of-turn/EOS token ends it with "stop" (the token's text is not sent); a stop
string ends it with "stop" (text cut before the match); `max_tokens` new tokens, or the model's
position limit, end it with "length". Text held back for a possible stop string is sent when the
completion ends otherwise, in a last Delta that may carry no token ids.

Token counts: `Finish.completion_tokens` counts every token generated, the end-of-turn token
included; `Delta.token_ids` (and `Completion.token_ids`) hold every token but the end-of-turn one.
"""

from __future__ import annotations

from .detokenize import Detokenizer, StopMatcher
from .handle import RequestHandle
from .requests import Delta, Finish, TokenLogprob
from .sampling import Choice, RowSampler


class Sequence:
    """Completion `index` of a request; `last` is the token the next decode step feeds."""

    def __init__(self, handle: RequestHandle, index: int, tokenizer, stop_ids: set[int], max_len: int | None):
        params = handle.params
        self.handle, self.index, self.tokenizer = handle, index, tokenizer
        self.sampler = RowSampler.for_completion(params, index)
        self.stop_ids = stop_ids
        self.max_tokens = params.max_tokens
        if max_len is not None:  # never step past the model's last position
            self.max_tokens = min(self.max_tokens, max_len - handle.prompt_tokens)
        self.detok = Detokenizer(tokenizer)
        self.stops = StopMatcher(params.stop)
        self.generated = 0
        self.last = -1
        self.finished: str | None = None

    def advance(self, choice: Choice) -> None:
        """Take the chosen token: send its Delta, and the Finish when it ends the completion."""
        token = choice.token
        self.generated += 1
        self.last = token
        if token in self.stop_ids:
            self.finish("stop")
            return
        text = self.stops.feed(self.detok.push(token))
        if not self.stops.matched and self.generated >= self.max_tokens:  # the last token: release all
            text += self.stops.feed(self.detok.flush())
            if not self.stops.matched:
                text += self.stops.flush()
        logprobs = [self._logprob(choice)] if choice.logprob is not None else []
        self.handle.push(Delta(self.index, text, [token], logprobs))
        if self.stops.matched:
            self.finish("stop")
        elif self.generated >= self.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        """End the completion; text still held back is sent first unless it was cut or cancelled."""
        if self.finished is not None:
            return
        self.finished = reason
        if reason == "stop" and not self.stops.matched:  # end-of-turn token: release held text
            tail = self.stops.feed(self.detok.flush())
            tail += "" if self.stops.matched else self.stops.flush()
            if tail:
                self.handle.push(Delta(self.index, tail, []))
        self.handle.push(Finish(self.index, reason, self.generated))

    def _logprob(self, choice: Choice) -> TokenLogprob:
        text = self._text
        return TokenLogprob(choice.token, text(choice.token), choice.logprob,
                            [(t, text(t), lp) for t, lp in choice.top or []])

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else ""
