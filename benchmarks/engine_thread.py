"""Which thread steps the generation engine: its own (Engine.start) or the one that loaded the model
(Engine.run), side by side in one process, on the same requests.

torch's OpenMP runtime (libgomp) keeps a thread team for every thread that has run a parallel op.
Loading a model runs some, so after `start()` two teams exist. With more OpenMP threads than cores,
libgomp stops spinning between parallel regions and wakes its workers through the kernel each time.
This measures what that costs:

1. one parallel elementwise op ([128, 1536] * 2 + 1), in the loading thread and in a second thread;
2. the engine on a stream of chat requests (the serve benchmark's mix: prompts of 5-300 words,
   16-128 new tokens, greedy, 16 rows), fp32 and bf16, stepped by its own thread and by the
   loading thread, interleaved, best of REPEATS; the greedy outputs of both must be identical.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/engine_thread.py [--requests 64] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append_section  # noqa: E402
from serve_load import prompts  # noqa: E402


def elementwise_us(in_thread: bool, iters: int = 5000) -> float:
    """Microseconds per `x * 2 + 1` on [128, 1536] fp32 (large enough for torch to run it in parallel)."""
    x = torch.randn(128, 1536)
    out: list[float] = []

    def work() -> None:
        for _ in range(200):
            x * 2 + 1
        t = time.perf_counter()
        for _ in range(iters):
            x * 2 + 1
        out.append((time.perf_counter() - t) / iters * 1e6)

    if in_thread:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    else:
        work()
    return out[0]


def engine_run(model, tok, requests: list[tuple[list[int], int]], own_thread: bool) -> tuple[float, int, list]:
    """(seconds, generated tokens, token ids per request) for one pass over `requests`."""
    from tunesmith.generation.engine import Engine
    from tunesmith.generation.requests import SamplingParams

    engine = Engine(model, tok, max_batch=16, max_queue=len(requests) + 1)
    t = time.perf_counter()
    handles = [engine.submit(ids, SamplingParams(max_tokens=m), stream=False) for ids, m in requests]
    if own_thread:
        engine.start()
        for h in handles:
            h.done.wait()
    else:
        engine.run(until=lambda: all(h.done.is_set() for h in handles))
    seconds = time.perf_counter() - t
    engine.shutdown(grace_s=0)
    outputs = [h.completions()[0].token_ids for h in handles]
    return seconds, sum(map(len, outputs)), outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tunesmith.data.chat import render
    from tunesmith.models import load_model, local_model_dir
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_model_dir("smollm2-135m-instruct"))
    mix = prompts(args.requests, seed=1)
    requests = [(render(tok, [{"role": "user", "content": p}], True), m) for p, m in mix]

    rows, micro = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(None, dtype=dtype, log=lambda *a: None)  # in this thread, as every verb does
        if not micro:  # after a load, as the engine meets it
            micro = {"loading thread": elementwise_us(False), "second thread": elementwise_us(True)}
        engine_run(model, tok, requests[:4], own_thread=False)  # warm-up
        best = {True: None, False: None}
        outputs = {}
        for _ in range(args.repeats):
            for own in (True, False):
                seconds, tokens, outs = engine_run(model, tok, requests, own)
                outputs[own] = outs
                if best[own] is None or seconds < best[own][0]:
                    best[own] = (seconds, tokens)
                print(f"{dtype} own_thread={own}: {seconds:.1f} s, {tokens / seconds:.1f} tok/s", flush=True)
        same = sum(a == b for a, b in zip(outputs[True], outputs[False]))
        name = str(dtype).replace("torch.", "")
        own_rate = best[True][1] / best[True][0]
        run_rate = best[False][1] / best[False][0]
        rows.append(f"| {name} | {best[True][0]:.1f} s, {own_rate:.1f} tok/s | {best[False][0]:.1f} s, "
                    f"{run_rate:.1f} tok/s | {run_rate / own_rate:.2f}x | {same}/{len(requests)} |")
        del model

    body = "\n".join([
        f"{args.requests} chat requests of the serve benchmark's mix (prompts of 5-300 words, 16-128 new tokens, greedy), "
        f"16 rows, SmolLM2-135M-Instruct loaded in the main thread; best of {args.repeats}, interleaved; "
        f"torch threads {args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "",
        "| dtype | stepped by its own thread (Engine.start) | stepped by the loading thread (Engine.run) | speed-up | "
        "identical outputs |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"One parallel elementwise op ([128, 1536] * 2 + 1) after the model has loaded: "
        f"{micro['loading thread']:.1f} us in the loading thread, {micro['second thread']:.1f} us in a second thread.",
    ])
    print(body)
    if args.record:
        append_section("Which thread steps the generation engine: its own vs the one that loaded the model",
                       "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/engine_thread.py "
                       f"--requests {args.requests} --record`", body)


if __name__ == "__main__":
    main()
