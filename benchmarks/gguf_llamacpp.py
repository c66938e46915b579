"""GGUF export in real llama.cpp: file size, held-out task exact-match and generation speed per type,
next to tunesmith's own fp32 generation of the same model.

The model (default: the bundled SmolLM2-135M-Instruct; any spec tunesmith accepts, e.g. a run's
RUN/model) is exported with `tunesmith.export.gguf.write_gguf` to each type, loaded with
llama-cpp-python, and the held-out task prompts (the chat template's ids, fed as ids) are decoded
greedily up to --max-new-tokens, stopping at EOS / end of turn. Outputs are scored with
`tunesmith.data.tasks.check_answer`. tokens/s is new tokens over the whole generation time, prompt
processing included (llama.cpp: one prompt at a time; tunesmith: its default batched generation,
tokens counted by re-tokenizing the output text). Needs llama-cpp-python.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/gguf_llamacpp.py [MODEL] \
        [--items 260] [--max-new-tokens 20] [--threads 2] [--types f16,q8_0,q4_0] [--record]

--record appends the table to BENCHMARKS.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ("llama-cpp-python is not installed: `.venv/bin/pip install llama-cpp-python` (builds llama.cpp from "
           "source with CMake, ~15 min on 2 cores) or `.venv/bin/pip install /work/wheels/llama_cpp_python-*.whl`")


def parse_args(argv=None) -> argparse.Namespace:
    from tunesmith.export.gguf import GGUF_TYPES
    from tunesmith.models import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                    help="bundled name, Hugging Face model folder (e.g. RUN/model), .gguf or hub id")
    ap.add_argument("--items", type=int, default=260, help="held-out task items (default: all 260)")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp n_threads and torch threads")
    ap.add_argument("--types", default="f16,q8_0,q4_0", help=f"comma-separated, from {', '.join(GGUF_TYPES)}")
    ap.add_argument("--out", type=Path, help="keep the GGUF files in this folder (default: a temporary one)")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args(argv)
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]
    bad = [t for t in args.types if t not in GGUF_TYPES]
    if bad:
        ap.error(f"--types: {', '.join(bad)} not in {', '.join(GGUF_TYPES)}")
    return args


def _greedy(llm, ids: list[int], stop: set[int], max_new: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token in stop or len(out) >= max_new:
            break
    return out


def run_llamacpp(path: Path, tokenizer, items, prompts, stop: set[int], args) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, verbose=False, logits_all=False, n_threads=args.threads)
    texts, new_tokens = [], 0
    t0 = time.perf_counter()
    for ids in prompts:
        out = _greedy(llm, ids, stop, args.max_new_tokens)
        new_tokens += len(out)
        texts.append(tokenizer.decode([t for t in out if t not in stop], skip_special_tokens=True))
    seconds = time.perf_counter() - t0
    del llm
    return {"texts": texts, "tokens": new_tokens, "seconds": seconds}


def run_tunesmith(model_spec: str, tokenizer, conversations, args) -> dict:
    import torch

    from tunesmith.evaluate.generate import generate
    from tunesmith.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(model_spec, log=lambda *a: None)
    t0 = time.perf_counter()
    texts = generate(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - t0
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"texts": texts, "tokens": tokens, "seconds": seconds}


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit(INSTALL)
    from tunesmith.data.chat import end_of_turn_ids
    from tunesmith.data.tasks import check_answer, generate_train_eval
    from tunesmith.evaluate.generate import prompt_ids
    from tunesmith.export.gguf import write_gguf
    from tunesmith.models import load_tokenizer, local_model_dir

    quiet = lambda *a: None  # noqa: E731
    model_dir = Path(local_model_dir(args.model, log=quiet))
    tokenizer = load_tokenizer(args.model, log=quiet)
    items = generate_train_eval(0, args.items, 0)[1]
    conversations = [[{"role": "user", "content": it.prompt}] for it in items]
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    stop = end_of_turn_ids(tokenizer)

    def score(texts):
        return sum(check_answer(it.task, t, it.answer) for it, t in zip(items, texts))

    print(f"tunesmith fp32 on {len(items)} items ...", flush=True)
    ref = run_tunesmith(args.model, tokenizer, conversations, args)
    fp32_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e6
    header = "| format | file MB | exact-match | same text as fp32 | new tokens | tokens/s | export s |"
    lines = [header, "|---|---|---|---|---|---|---|",
             f"| tunesmith fp32 (safetensors) | {fp32_mb:.1f} | {score(ref['texts'])}/{len(items)} | — | "
             f"{ref['tokens']} | {ref['tokens'] / ref['seconds']:.1f} | — |"]
    print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        out_dir = args.out or Path(tmp)
        for qtype in args.types:
            t0 = time.perf_counter()
            exported = write_gguf(model_dir, out_dir / f"{model_dir.name}-{qtype}.gguf", qtype, log=quiet)
            export_s = time.perf_counter() - t0
            r = run_llamacpp(Path(exported["path"]), tokenizer, items, prompts, stop, args)
            same = sum(a.strip() == b.strip() for a, b in zip(r["texts"], ref["texts"]))
            lines.append(f"| llama.cpp {qtype} | {exported['bytes'] / 1e6:.1f} | {score(r['texts'])}/{len(items)} | "
                         f"{same}/{len(items)} | {r['tokens']} | {r['tokens'] / r['seconds']:.1f} | {export_s:.1f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.record:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
        cmd = "python benchmarks/gguf_llamacpp.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## GGUF export in llama.cpp vs tunesmith fp32 ({date.today()}, {machine})\n\n"
                    f"`{cmd.strip()}`: model {args.model}, {len(items)} held-out task items, greedy, at most "
                    f"{args.max_new_tokens} new tokens; llama-cpp-python one prompt at a time, tunesmith batched "
                    "(its default); tokens/s includes prompt processing.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
