"""The generation engine against the ways transformers generates on this CPU, and the IFBench eval
before and after it, in one process.

Part 1, decode options (SmolLM2-135M fp32, 16 chat prompts, NEW tokens each with EOS ignored,
prefill included, interleaved, best of 2): model.generate with a DynamicCache, with a static
cache, transformers' continuous batching (generate_batch), and tunesmith's Engine; at batch 1
and 16 (and the Engine at 32, 64).

Part 2, the IFBench suite's generation (the first ITEMS prompts, 512 new tokens, greedy): the
generation tunesmith used before the engine (model.generate on length-sorted left-padded batches
of 32, as evaluate/generate.py did) against the engine at 32 and 64 concurrent sequences; wall
time, how many outputs are identical, and peak RSS. Each side runs in a fresh process of its own,
one after another.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/generation_engine.py [--items 64] [--sizes 32 64]
        [--skip-options] [--record]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append_section  # noqa: E402

TOPICS = ["the moon", "a short poem about rain", "why the sky is blue", "how to bake bread", "python lists",
          "the history of Rome in three sentences", "tips for sleeping well", "what is a prime number"]


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def decode_options(model, tok, new_tokens: int) -> list[str]:
    from transformers import GenerationConfig

    from tunesmith.data.chat import render
    from tunesmith.generation.engine import Engine
    from tunesmith.generation.requests import SamplingParams

    prompts = [render(tok, [{"role": "user", "content": f"Tell me about {t}." + " Please be detailed." * (i % 4)}], True)
               for i, t in enumerate(TOPICS * 8)]

    def hf(batch, **kw):
        ids, mask = left_pad(batch, 0)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=0, **kw)
        return (out.shape[1] - ids.shape[1]) * len(batch)

    def cb(batch):
        config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
        with torch.inference_mode():
            res = model.generate_batch(batch, generation_config=config)
        return sum(len(r.generated_tokens) for r in res.values())

    def engine(batch):
        eng = Engine(model, tok, max_batch=len(batch), stop_token_ids=set())
        return sum(len(r[0].token_ids) for r in eng.generate(batch, SamplingParams(max_tokens=new_tokens)))

    options = {"model.generate, DynamicCache": (hf, (1, 16)),
               "model.generate, static cache": (lambda b: hf(b, cache_implementation="static"), (1, 16)),
               "transformers generate_batch (continuous batching)": (cb, (1, 16)),
               "tunesmith Engine": (engine, (1, 16, 32, 64))}
    for fn, _ in options.values():
        fn(prompts[:2])  # warm-up
    best: dict[tuple[str, int], float] = {}
    for _ in range(2):
        for name, (fn, sizes) in options.items():
            for size in sizes:
                t0 = time.perf_counter()
                n = fn(prompts[:size])
                rate = n / (time.perf_counter() - t0)
                best[(name, size)] = max(best.get((name, size), 0.0), rate)
                print(f"{name} batch {size}: {rate:.1f} tok/s", flush=True)
    lines = [f"Decode throughput, output tokens/s (16 to 64 chat prompts, {new_tokens} new tokens each, EOS ignored, "
             "prefill included, best of 2):", "", "| option | batch 1 | batch 16 | batch 32 | batch 64 |",
             "|---|---|---|---|---|"]
    for name in options:
        cells = [f"{best[(name, s)]:.1f}" if (name, s) in best else "-" for s in (1, 16, 32, 64)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def old_generate(model, tok, encoded: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """tunesmith's generation before the engine: length-sorted left-padded batches through model.generate."""
    from tunesmith.data.chat import end_of_turn_ids

    eos = sorted(end_of_turn_ids(tok))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad_id, use_cache=True, temperature=None, top_p=None,
                                 top_k=None)
        for row, i in enumerate(idx):
            outputs[i] = tok.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
    return outputs


def ifbench_side(side: str, items: int, out: str) -> None:
    """One side of part 2 in this (fresh) process: generate, then write the outputs, the seconds and
    the process's peak RSS to `out` (JSON). side: "before" or the engine's batch size."""
    from tunesmith.evalsets.ifbench import load_ifbench_prompts
    from tunesmith.evaluate.generate import generate, prompt_ids
    from tunesmith.models import load_model, load_tokenizer

    tok = load_tokenizer(None, log=lambda *a: None)
    model = load_model(None, log=lambda *a: None).eval()
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in load_ifbench_prompts(items)]
    t0 = time.perf_counter()
    if side == "before":
        texts = old_generate(model, tok, [prompt_ids(tok, c) for c in prompts], 512, 32)
    else:
        texts = generate(model, tok, prompts, max_new_tokens=512, batch_size=int(side))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)
    Path(out).write_text(json.dumps({"texts": texts, "seconds": seconds, "peak_rss": peak}))


def ifbench_generation(items: int, sizes: list[int]) -> list[str]:
    """Part 2: each side in a fresh process of its own, one after another (as `tunesmith eval` runs:
    neither side inherits the other's allocator state or caches), in this one invocation."""
    from tunesmith.stages.evaluate import SuiteOptions

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ["before"] + [str(size) for size in sizes]:
            out = str(Path(tmp) / f"{side}.json")
            subprocess.run([sys.executable, __file__, "--side", side, "--items", str(items), "--side-out", out],
                           check=True)
            results[side] = json.loads(Path(out).read_text())
            print(side, results[side]["seconds"], flush=True)
    before = results["before"]
    rows = [("before: model.generate, padded batches of 32", before, items)]
    for size in sizes:
        after = results[str(size)]
        rows.append((f"tunesmith Engine, {size} sequences", after,
                     sum(a == b for a, b in zip(after["texts"], before["texts"]))))
    lines = [f"IFBench suite generation, first {items} prompts, 512 new tokens, greedy, each side in a fresh "
             f"process (`tunesmith eval` runs the engine at {SuiteOptions().batch_size} sequences):", "",
             "| generation | seconds | speed-up | outputs identical to before | peak RSS of the process |",
             "|---|---|---|---|---|"]
    for name, res, same in rows:
        lines.append(f"| {name} | {res['seconds']:.0f} | {before['seconds'] / res['seconds']:.2f}x | {same}/{items} "
                     f"| {res['peak_rss'] / 2**30:.2f} GiB |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=64, help="IFBench prompts")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--skip-options", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="engine batch sizes (concurrent sequences)")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--side", help=argparse.SUPPRESS)  # internal: one side of part 2 (ifbench_side)
    ap.add_argument("--side-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        ifbench_side(args.side, args.items, args.side_out)
        return
    lines = []
    if not args.skip_options:
        from tunesmith.models import load_model, load_tokenizer

        tok = load_tokenizer(None, log=lambda *a: None)
        model = load_model(None, log=lambda *a: None).eval()
        lines = decode_options(model, tok, args.new_tokens) + [""]
        del model
    lines += ifbench_generation(args.items, args.sizes)
    table = "\n".join(lines)
    print(table)
    if args.record:
        append_section("Generation engine vs transformers' generation, and the IFBench eval before/after",
                       "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/generation_engine.py "
                       + " ".join(sys.argv[1:]) + "`",
                       table)


if __name__ == "__main__":
    main()
