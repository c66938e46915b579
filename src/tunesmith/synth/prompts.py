"""A synthesis prompt: the conversation the model answers, and the verifier that scores each answer.

Verifiers (`SynthPrompt.verifier`):
    ifeval  every IFEval instruction of the item followed (strict; loose is recorded too); `spec` is
            the item (key, prompt, instruction_id_list, kwargs)
    tasks   `data.tasks.check_answer` against the reference; `spec` is {task, answer}
    code    the problem's unit tests pass in the sandbox; `spec` is {task_id, prompt, test, entry_point}
    none    nothing can check the answer (a user row's free-text reply); samples are kept in
            samples.jsonl only, never in sft.jsonl or pairs.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERIFIERS = ("ifeval", "tasks", "code", "none")


@dataclass
class SynthPrompt:
    """One prompt to sample answers for.

    id:        unique within a synth run (the generator's key, or file:line for a user row)
    source:    the --prompts entry it came from ("ifeval", "tasks" or the path as given)
    origin:    where it was made or read (file:line, or generator:seed:index), kept in every output row
    messages:  the conversation to answer; it ends with a user turn
    verifier:  one of VERIFIERS; `spec` holds what it needs (see the module docstring)
    groups:    what its acceptance is counted under in the report (instruction ids, the task type, "code")
    reference: the answer a user row came with, when it has one (kept for the record, not verified)
    """

    id: str
    source: str
    origin: str
    messages: list[dict[str, Any]]
    verifier: str
    spec: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.verifier not in VERIFIERS:
            raise ValueError(f"unknown verifier {self.verifier!r}; expected one of {VERIFIERS}")

    @property
    def user_text(self) -> str:
        """The user turns joined by newlines (what decontamination compares with eval prompts)."""
        return "\n".join(str(m.get("content") or "") for m in self.messages if m.get("role") == "user")
