"""The generation engine alone on serve_load.py's request mix (chat prompts of 5-300 words, max_tokens 16-128,
greedy), bf16 weights, 16 rows, best of 2: output tokens/s without HTTP. For A/B runs of two commits, point
PYTHONPATH at a worktree's src (the line `engine from` says which code ran):

    git worktree add /tmp/old COMMIT
    flock -x /tmp/tunesmith-cpu.lock env PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/engine_serve_mix.py
    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/engine_serve_mix.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args()
    import tunesmith.generation.engine as engine_module
    from tunesmith.evaluate.generate import prompt_ids
    from tunesmith.generation.engine import Engine
    from tunesmith.generation.requests import SamplingParams
    from tunesmith.models import load_model, load_tokenizer

    print("engine from", engine_module.__file__, flush=True)
    tok = load_tokenizer(None, log=lambda *a: None)
    model = load_model(None, dtype=torch.bfloat16, log=lambda *a: None).eval()
    items = prompts(args.requests)
    encoded = [prompt_ids(tok, [{"role": "user", "content": p}]) for p, _ in items]
    print(f"prompt tokens: {min(map(len, encoded))}-{max(map(len, encoded))}", flush=True)
    best = 0.0
    for rep in range(2):
        engine = Engine(model, tok, max_batch=args.rows, max_queue=len(items))
        t0 = time.perf_counter()
        handles = [engine.submit(e, SamplingParams(max_tokens=m), stream=False) for e, (_, m) in zip(encoded, items)]
        while not all(h.done.is_set() for h in handles):
            engine.step()
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for h in handles for c in h.completions())
        best = max(best, tokens / seconds)
        print(f"run {rep + 1}: {tokens} tokens in {seconds:.1f} s: {tokens / seconds:.1f} tok/s", flush=True)
    print(f"best of 2: {best:.1f} tok/s")


if __name__ == "__main__":
    main()
