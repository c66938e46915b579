"""Serving under load, side by side: tunesmith serve, llama.cpp's llama-server and `transformers serve`.

Each server is started in turn on loopback with the same model (SmolLM2-135M-Instruct: fp32 and
bf16 weights for tunesmith, fp32 for transformers, the f16 GGUF that tunesmith exports for llama.cpp), the same thread
count, and driven by the same client: CONCURRENCY streaming clients sending REQUESTS chat
requests of mixed prompt and output lengths (greedy, `max_tokens` from 16 to 128, seeded), then
the same at concurrency 1. Per server: failed requests, p50/p99 time to first token, p50/p99
end-to-end latency, aggregate output tokens/s. A side client also sends bad requests during the
load, the same to tunesmith and llama-server (wrong key -> 401, a body that is not JSON -> 400;
about 15 a second), and their p99 latency is reported. Stops by itself; binds 127.0.0.1 only.

    flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/serve_load.py \
        [--llama-server PATH] [--requests 1000] [--concurrency 16] [--threads 2] [--record]

llama-server is built from the llama.cpp sources inside llama-cpp-python's sdist (see
--llama-server's help); a missing binary leaves that row out, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import append_section  # noqa: E402

BIN = Path(sys.executable).parent
KEY = "bench-key-0123456789"
WORDS = ("list sort number city river explain why how short story poem letter summary plan reason answer "
         "friend umbrella weather code python function test count reverse vowel").split()


@dataclass
class Result:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    rejected_latency: list[float] = field(default_factory=list)


def prompts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, max_tokens): prompts of 5 to 300 words, outputs of 16 to 128 tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice([5, 20, 60, 150, 300])
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append((f"Write about: {text}", rng.choice([16, 32, 64, 128])))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx2 as httpx  # the HTTP client the openai package brings

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout} s")


async def one(client, url: str, model: str, prompt: str, max_tokens: int, res: Result) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    chunks = usage = 0
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {KEY}"}) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"].get("completion_tokens", 0)
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
        res.failed += 1
        res.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    res.ok += 1
    res.latency.append(time.perf_counter() - t0)
    res.ttft.append(first if first is not None else time.perf_counter() - t0)
    res.tokens += usage or chunks


async def rejected(client, url: str, stop: asyncio.Event, res: Result, strict: bool) -> None:
    """Bad requests during the load: each must be refused fast, without touching the model. Every server
    gets the same ones (a wrong key, and a body that is not JSON), so the side load costs all alike;
    `strict`: the answer must be 401 / 400 (llama-server's codes for the second are its own)."""
    hi = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    bad = [({"Authorization": "Bearer wrong"}, hi, 401),
           ({"Authorization": f"Bearer {KEY}"}, hi[:-7], 400)]  # cut short: not JSON
    i = 0
    while not stop.is_set():
        headers, body, expect = bad[i % len(bad)]
        t0 = time.perf_counter()
        resp = await client.post(url + "/v1/chat/completions", content=body,
                                 headers={**headers, "Content-Type": "application/json"})
        if resp.status_code < 400 or (strict and resp.status_code != expect):
            res.errors.append(f"bad request answered {resp.status_code}, expected {expect}")
        res.rejected_latency.append(time.perf_counter() - t0)
        i += 1
        await asyncio.sleep(0.05)  # about 15 bad requests a second beside the load


async def drive(url: str, model: str, items: list[tuple[str, int]], concurrency: int, probe_rejects: bool,
                strict_rejects: bool = True) -> Result:
    import httpx2 as httpx  # the HTTP client the openai package brings

    res = Result()
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    # A new connection per request for every server: llama-server closes idle keep-alive connections,
    # and a client that reuses one just as it closes sees "Server disconnected" (82 failures once).
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker():
            while not queue.empty():
                prompt, max_tokens = queue.get_nowait()
                await one(client, url, model, prompt, max_tokens, res)
        stop = asyncio.Event()
        side = asyncio.create_task(rejected(client, url, stop, res, strict_rejects)) if probe_rejects else None
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.wall = time.perf_counter() - t0
        stop.set()
        if side:
            await side
    return res


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def start_server(name: str, args, port: int, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    log = open(workdir / f"{name}.log", "w")
    if name.startswith("tunesmith"):  # tunesmith (fp32 weights) or tunesmith-bf16
        key = workdir / "key"
        key.write_text(KEY)
        cmd = [str(BIN / "tunesmith"), "serve", args.model, "--port", str(port), "--api-key-file", str(key),
               "--served-model-name", "smollm2", "--max-concurrent", str(args.concurrency),
               "--model.dtype", "bf16" if name.endswith("bf16") else "fp32"]
    elif name == "llama.cpp":
        cmd = [args.llama_server, "-m", str(args.gguf), "--port", str(port), "--host", "127.0.0.1", "-t",
               str(args.threads), "-np", str(args.concurrency), "-cb", "-c", str(args.concurrency * 1024),
               "--jinja", "--api-key", KEY]
    else:
        cmd = [str(BIN / "transformers"), "serve", str(args.hf_dir), "--port", str(port), "--host", "127.0.0.1",
               "--continuous-batching", "--device", "cpu"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def prepare_models(args, workdir: Path) -> None:
    """The fp32 model folder (transformers) and its f16 GGUF (llama.cpp), both from tunesmith."""
    from tunesmith.models import local_model_dir

    args.hf_dir = local_model_dir(args.model)
    args.gguf = workdir / "export" / "gguf" / "model-f16.gguf"
    if not args.gguf.exists():
        subprocess.run([str(BIN / "tunesmith"), "export", str(args.hf_dir), "--out", str(workdir / "export"),
                        "--to", "gguf-f16", "--overwrite"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--batch1-requests", type=int, default=16)
    ap.add_argument("--transformers-requests", type=int, default=200,
                    help="requests for transformers serve (slower: the first N of the same prompts)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", default="tunesmith,tunesmith-bf16,llama.cpp,transformers",
                    help="tunesmith serves fp32 weights, tunesmith-bf16 bf16 weights (llama.cpp serves f16)")
    ap.add_argument("--llama-server", default=shutil.which("llama-server") or "/work/llamacpp/llama-server",
                    help="llama-server binary: `cmake -B build -DLLAMA_CURL=OFF && cmake --build build --target "
                         "llama-server` in vendor/llama.cpp of `pip download --no-binary :all: llama-cpp-python`")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    prepare_models(args, workdir)
    items = prompts(args.requests)
    rows, notes = [], []
    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        if name == "llama.cpp" and not Path(args.llama_server).exists():
            notes.append(f"llama.cpp: no llama-server at {args.llama_server}; not measured")
            continue
        port = free_port()
        proc = start_server(name, args, port, workdir)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc)
            model = "smollm2" if name != "transformers" else str(args.hf_dir)
            asyncio.run(drive(url, model, items[:32], args.concurrency, False))  # warm-up
            mine = items[:args.transformers_requests] if name == "transformers" else items
            load = asyncio.run(drive(url, model, mine, args.concurrency, name != "transformers",
                                     strict_rejects=name.startswith("tunesmith")))
            single = asyncio.run(drive(url, model, items[:args.batch1_requests], 1, False))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{name}: {type(exc).__name__}: {exc} (log: {workdir / (name + '.log')})")
            continue
        finally:
            stop_server(proc)
        rows.append((name, load, single))
        if load.errors:
            notes.append(f"{name}: {load.failed} failed requests; first errors: {load.errors[:2]}")
        print(name, load.ok, load.failed, round(load.tokens / load.wall, 1), round(single.tokens / single.wall, 1),
              load.errors[:3], flush=True)

    lines = [f"{args.requests} streaming chat requests, {args.concurrency} concurrent clients, greedy, prompts of "
             f"5-300 words, max_tokens 16-128; then {args.batch1_requests} requests one at a time. "
             f"{args.threads} threads per server. During the load a side client sends the same bad requests to "
             "tunesmith and llama.cpp (wrong key, body not JSON; ~15/s).", "",
             "| server | ok | failed | p50 / p99 TTFT (s) | p50 / p99 latency (s) | output tok/s at "
             f"{args.concurrency} | output tok/s at 1 | rejected (400/401) p99 (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    base = next((load.tokens / load.wall for n, load, _ in rows if n == "llama.cpp"), None)
    base1 = next((s.tokens / s.wall for n, _, s in rows if n == "llama.cpp"), None)
    for name, load, single in rows:
        rej = f"{1000 * pct(load.rejected_latency, 99):.0f} (n={len(load.rejected_latency)})" \
            if load.rejected_latency else "-"
        lines.append(f"| {name} | {load.ok} | {load.failed} | {pct(load.ttft, 50):.2f} / {pct(load.ttft, 99):.2f} | "
                     f"{pct(load.latency, 50):.2f} / {pct(load.latency, 99):.2f} | {load.tokens / load.wall:.1f} | "
                     f"{single.tokens / single.wall:.1f} | {rej} |")
    if base:
        for name, load, single in [r for r in rows if r[0] != "llama.cpp"]:
            lines.append(f"\n{name} / llama.cpp: {load.tokens / load.wall / base:.2f}x at {args.concurrency} clients, "
                         f"{single.tokens / single.wall / base1:.2f}x at 1.")
    lines += [f"\n{n}" for n in notes]
    table = "\n".join(lines)
    print(table)
    if args.record:
        append_section("Serving under load: tunesmith serve vs llama-server vs transformers serve",
                       "`flock -x /tmp/tunesmith-cpu.lock .venv/bin/python benchmarks/serve_load.py --record`", table)


if __name__ == "__main__":
    main()
