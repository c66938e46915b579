"""The generation engine (tunesmith.generation): greedy equality with model.generate, shared prefill,
seeded sampling independent of the batch, stop strings, finish reasons, cancel, queue limits,
logprobs, shutdown, streaming.

Tiny random Llamas (weights re-drawn larger, so greedy text varies) where no real tokenizer is
needed; the bundled SmolLM2 for equality with `model.generate` on chat prompts.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest
import torch

from conftest import tiny_llama
from tunesmith.generation.detokenize import Detokenizer, StopMatcher
from tunesmith.generation.engine import Engine
from tunesmith.generation.handle import EngineClosed, QueueFull
from tunesmith.generation.requests import Delta, Finish, SamplingParams


def lively_llama(vocab: int = 97, seed: int = 0):
    """A tiny Llama whose greedy continuations are not one token repeated."""
    model = tiny_llama(seed=seed, vocab=vocab)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return model.eval()


def count_forwards(model):
    """Record the input shape of every forward (prefill or decode step, whichever path runs it) as
    the token-embedding lookup sees it; returns the list."""
    calls: list[tuple[int, int]] = []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    return calls


def slow_forwards(model, seconds: float):
    """Make every forward (prefill or decode step) take `seconds` longer."""
    model.model.embed_tokens.register_forward_pre_hook(lambda module, args: time.sleep(seconds))


PROMPTS = [[5, 17, 3, 88, 41, 9], [60, 2], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [70, 71, 72, 73],
           [33], [90, 1, 45, 23, 8, 77, 52]]


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


def test_continuous_batching_matches_one_by_one_generation():
    """Requests join and leave a batch of 2 (different lengths, padding trimmed) and still produce the
    tokens each one gets alone from model.generate."""
    model = lively_llama()
    engine = Engine(model, None, max_batch=2, stop_token_ids=set())
    lengths = [9, 3, 14, 6, 11, 4]
    outs = [engine.generate([p], SamplingParams(max_tokens=k))[0][0] for p, k in zip(PROMPTS, lengths)]
    batched = [engine.submit(p, SamplingParams(max_tokens=k)) for p, k in zip(PROMPTS, lengths)]
    while not all(h.done.is_set() for h in batched):
        engine._step()
    for p, k, alone, h in zip(PROMPTS, lengths, outs, batched):
        ref = reference_greedy(model, p, k)
        assert alone.token_ids == ref
        assert h.completions()[0].token_ids == ref
        assert h.completions()[0].finish_reason == "length"
    assert len({tuple(reference_greedy(model, p, 6)) for p in PROMPTS}) > 1  # the model is not degenerate
    assert engine.stats().sequences == 0 and engine._cache is None  # nothing left behind


def test_joining_prompts_share_one_packed_prefill_and_get_their_own_tokens():
    model = lively_llama()
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    calls = count_forwards(model)
    got = engine.generate(PROMPTS[:4], SamplingParams(max_tokens=5))
    assert calls[0] == (1, sum(len(p) for p in PROMPTS[:4]))  # one forward for the four prompts
    assert all(c == (4, 1) for c in calls[1:]) and len(calls) == 5  # then 4 decode steps of 4 rows
    assert [g[0].token_ids for g in got] == [reference_greedy(model, p, 5) for p in PROMPTS[:4]]


def test_a_prompt_that_fails_its_packed_prefill_fails_alone():
    """A forward that raises on one prompt's token: the packed prefill fails, each prompt is tried
    alone, and only that request ends in error."""
    model = lively_llama()
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())

    def poison(module, args):
        if args[0].shape[1] > 1 and (args[0] == 96).any():  # prefills only
            raise RuntimeError("token 96")

    model.model.embed_tokens.register_forward_pre_hook(poison)
    handles = [engine.submit(p, SamplingParams(max_tokens=3)) for p in (PROMPTS[0], [96, 5], PROMPTS[3])]
    while not all(h.done.is_set() for h in handles):
        engine._step()
    assert str(handles[1].error) == "token 96" and handles[1].completions()[0].finish_reason == "error"
    assert [handles[i].completions()[0].token_ids for i in (0, 2)] == \
        [reference_greedy(lively_llama(), p, 3) for p in (PROMPTS[0], PROMPTS[3])]
    assert handles[0].error is None and engine.stats().running == 0


def test_prefill_groups_keep_order_and_the_token_budget():
    from types import SimpleNamespace

    from tunesmith.generation.engine import prefill_groups
    handles = [SimpleNamespace(prompt_tokens=n) for n in (5, 6, 20, 3, 3, 30)]
    groups = prefill_groups(handles, 12)
    assert [[h.prompt_tokens for h in g] for g in groups] == [[5, 6], [20], [3, 3], [30]]


def test_a_quantized_export_generates_like_model_generate(tmp_path):
    """Quantized exports load as plain fp32 transformers modules; the engine runs them as any other."""
    from tunesmith import qformat
    from tunesmith.export import quantize as qz

    model = lively_llama()
    model.save_pretrained(tmp_path / "src")
    tensors, info = qz.quantize_model(model, "int8", log=lambda *a, **k: None)
    loaded = qformat.load_quantized_model(qformat.write_quantized(tmp_path / "q", tensors, info,
                                                                  copy_from=tmp_path / "src"))
    got = Engine(loaded, None, max_batch=2, stop_token_ids=set()).generate(PROMPTS[:3], SamplingParams(max_tokens=6))
    assert [g[0].token_ids for g in got] == [reference_greedy(loaded, p, 6) for p in PROMPTS[:3]]


def test_n_completions_share_one_prefill():
    model = lively_llama()
    engine = Engine(model, None, stop_token_ids=set())
    calls = count_forwards(model)
    [completions] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=5, n=3))
    assert [c for c in calls if c[1] > 1] == [(1, len(PROMPTS[0]))]  # one prefill, one row
    assert [c for c in calls if c[1] == 1] == [(3, 1)] * 4  # 3 rows decode; the first token came from the prefill
    assert len(completions) == 3
    assert completions[0].token_ids == completions[1].token_ids == completions[2].token_ids
    assert completions[0].token_ids == reference_greedy(model, PROMPTS[0], 5)


def test_llama_models_run_through_the_written_out_step_and_others_through_forward():
    from peft import LoraConfig, get_peft_model

    from tunesmith.generation.llama_step import LlamaStep
    model = lively_llama()
    engine = Engine(model, None, stop_token_ids=set())
    assert engine.runner.llama_step is not None
    forwards = []
    model.forward = functools.wraps(model.forward)(lambda *a, _f=model.forward, **k: forwards.append(1) or _f(*a, **k))
    [[greedy]] = engine.generate([PROMPTS[2]], SamplingParams(max_tokens=6))
    assert forwards == []  # neither the prefill nor the 5 decode steps entered model.forward
    assert greedy.token_ids == reference_greedy(lively_llama(), PROMPTS[2], 6)
    peft = get_peft_model(lively_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not LlamaStep.supports(peft) and not LlamaStep.supports(peft.base_model.model)
    assert Engine(peft, None, stop_token_ids=set()).runner.llama_step is None


def _logprob_run(model, prompts, max_tokens: int, written_out: bool):
    """Greedy token ids and per-token logprobs (top 2) of an engine that decodes through the
    written-out step, or through the model's own forward."""
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    if not written_out:
        engine.runner.llama_step = None
    got = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, logprobs=True, top_logprobs=2))
    return [(g[0].token_ids, [(lp.token_id, lp.logprob, lp.top) for lp in g[0].logprobs]) for g in got]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_written_out_step_packs_its_weights_and_computes_what_the_forward_does(dtype):
    """On CPU: q/k/v and gate/up fused, every weight packed once for oneDNN. bf16: the logprobs are
    bit-equal to the model's own forward; fp32: the same greedy tokens, logprobs within 1e-5 (oneDNN
    sums in another order than MKL). An in-place weight update (an optimizer step) is seen by the
    next step."""
    model = lively_llama().to(dtype)
    step = Engine(model, None, stop_token_ids=set()).runner.llama_step
    assert step.o[0].pack == torch.backends.mkldnn.is_available()
    assert len(step.qkv) == len(model.model.layers) and len(step.qkv[0].linears) == 3
    before = _logprob_run(model, PROMPTS[:4], 8, written_out=True)
    forward = _logprob_run(model, PROMPTS[:4], 8, written_out=False)
    if dtype == torch.bfloat16:
        assert before == forward
    else:
        assert [ids for ids, _ in before] == [ids for ids, _ in forward]
        got = torch.tensor([lp for _, lps in before for _, lp, _ in lps])
        want = torch.tensor([lp for _, lps in forward for _, lp, _ in lps])
        assert torch.allclose(got, want, rtol=0, atol=1e-5) and not torch.equal(got, torch.zeros_like(got))
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    engine.generate(PROMPTS[:1], SamplingParams(max_tokens=3))  # packs the weights as they are now
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(-1.5)
            layer.mlp.up_proj.weight.add_(0.05)
    after = [g[0].token_ids for g in engine.generate(PROMPTS[:4], SamplingParams(max_tokens=8))]
    assert after == [ids for ids, _ in _logprob_run(model, PROMPTS[:4], 8, written_out=False)]
    assert after != [ids for ids, _ in before]


def test_run_steps_in_the_calling_thread_while_others_submit_and_stops_when_told():
    """Engine.run: every forward runs in the thread that called run() (the one that loaded the model),
    requests come from another thread, and run() returns once `until()` is true."""
    model = lively_llama()
    engine = Engine(model, None, max_batch=2, stop_token_ids=set())
    forward_threads = set()
    model.model.embed_tokens.register_forward_hook(lambda *a: forward_threads.add(threading.get_ident()))
    done = threading.Event()
    handles = []

    def client():
        handles.extend(engine.submit(p, SamplingParams(max_tokens=5), stream=False) for p in PROMPTS[:3])
        for h in handles:
            h.done.wait(30)
        done.set()

    other = threading.Thread(target=client)
    other.start()
    engine.run(until=done.is_set, poll_s=0.01)
    other.join()
    assert forward_threads == {threading.get_ident()}
    assert [h.completions()[0].token_ids for h in handles] == [reference_greedy(model, p, 5) for p in PROMPTS[:3]]
    assert engine.step() is False  # nothing left to do


def test_seeded_sampling_is_independent_of_the_batch():
    model = lively_llama()
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=1234)
    alone = Engine(model, None, stop_token_ids=set()).generate([PROMPTS[0]], params)[0][0].token_ids
    engine = Engine(model, None, max_batch=4, stop_token_ids=set())
    others = [engine.submit(PROMPTS[1], SamplingParams(max_tokens=20, temperature=1.0)),
              engine.submit(PROMPTS[2], SamplingParams(max_tokens=3))]
    engine._step()  # the seeded request joins a running batch, with padding around it
    mine = engine.submit(PROMPTS[0], params)
    while not (mine.done.is_set() and all(h.done.is_set() for h in others)):
        engine._step()
    assert mine.completions()[0].token_ids == alone
    unseeded = Engine(model, None, stop_token_ids=set()).generate([PROMPTS[0]], SamplingParams(
        max_tokens=12, temperature=0.9, seed=99))[0][0].token_ids
    assert unseeded != alone  # the seed matters
    # completion i of a seeded request samples like a request seeded with seed + i
    pair = Engine(model, None, stop_token_ids=set()).generate([PROMPTS[0]], SamplingParams(
        max_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=1233, n=2))[0]
    assert pair[1].token_ids == alone


def test_max_tokens_ends_with_length_and_eos_with_stop():
    model = lively_llama()
    engine = Engine(model, None, stop_token_ids=set())
    handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=5))
    while not handle.done.is_set():
        engine._step()
    events = list(handle.events(timeout=1))
    assert [type(e) for e in events] == [Delta] * 5 + [Finish]
    assert events[-1] == Finish(0, "length", 5)
    ref = reference_greedy(model, PROMPTS[0], 5)
    eos = Engine(model, None, stop_token_ids={ref[2]}).generate([PROMPTS[0]], SamplingParams(max_tokens=5))[0][0]
    assert eos.finish_reason == "stop" and eos.token_ids == ref[:2]  # the end-of-turn token is not output


def test_cancel_frees_the_slot_for_the_queue():
    model = lively_llama()
    slow_forwards(model, 0.01)
    engine = Engine(model, None, max_batch=1, stop_token_ids=set())
    engine.start()
    try:
        first = engine.submit(PROMPTS[0], SamplingParams(max_tokens=200))
        second = engine.submit(PROMPTS[1], SamplingParams(max_tokens=3))
        events = first.events(timeout=10)
        assert isinstance(next(events), Delta)
        stats = engine.stats()
        assert (stats.running, stats.queued) == (1, 1)
        first.cancel()
        rest = list(events)
        assert rest[-1].finish_reason == "cancelled" and rest[-1].completion_tokens < 200
        assert second.done.wait(10)
        assert second.completions()[0].finish_reason == "length"
        stats = engine.stats()
        assert (stats.running, stats.queued, stats.requests_finished) == (0, 0, 2)
    finally:
        engine.shutdown(grace_s=0)


def test_queue_full_and_cancel_while_queued():
    engine = Engine(lively_llama(), None, max_batch=1, max_queue=1, stop_token_ids=set())
    engine.submit(PROMPTS[0], SamplingParams(max_tokens=4))
    b = engine.submit(PROMPTS[1], SamplingParams(max_tokens=4))
    with pytest.raises(QueueFull):
        engine.submit(PROMPTS[2], SamplingParams(max_tokens=4))
    b.cancel()  # a queued request ends at once
    assert [e.finish_reason for e in b.events(timeout=1)] == ["cancelled"]
    engine.submit(PROMPTS[2], SamplingParams(max_tokens=4))  # its place in the queue is free again
    with pytest.raises(ValueError):
        engine.submit(PROMPTS[0], SamplingParams(n=2))  # more completions than batch rows


def test_logprobs_equal_a_plain_forward():
    model = lively_llama()
    engine = Engine(model, None, max_batch=3, stop_token_ids=set())
    params = SamplingParams(max_tokens=10, temperature=0.8, seed=7, logprobs=True, top_logprobs=3)
    handles = [engine.submit(p, params if i != 1 else SamplingParams(max_tokens=4, logprobs=True))
               for i, p in enumerate(PROMPTS[:3])]
    while not all(h.done.is_set() for h in handles):
        engine._step()
    for prompt, handle in zip(PROMPTS, handles):
        completion = handle.completions()[0]
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, V]
        for j, (tok, lp) in enumerate(zip(completion.token_ids, completion.logprobs)):
            row = logp[len(prompt) - 1 + j]
            assert lp.token_id == tok
            assert abs(lp.logprob - row[tok].item()) < 1e-4
            assert [t for t, _, _ in lp.top] == row.topk(handle.params.top_logprobs).indices.tolist()
            for t, _, v in lp.top:
                assert abs(v - row[t].item()) < 1e-4


def test_shutdown_lets_short_requests_finish_and_cancels_the_rest():
    model = lively_llama()
    slow_forwards(model, 0.01)
    engine = Engine(model, None, stop_token_ids=set())
    engine.start()
    short = engine.submit(PROMPTS[0], SamplingParams(max_tokens=3))
    long = engine.submit(PROMPTS[1], SamplingParams(max_tokens=240))
    engine.shutdown(grace_s=0.5)
    assert short.completions()[0].finish_reason == "length"
    assert long.done.is_set() and long.completions()[0].finish_reason == "cancelled"
    with pytest.raises(EngineClosed):
        engine.submit(PROMPTS[0], SamplingParams())
    assert not engine._thread.is_alive()


def test_a_failing_forward_ends_requests_with_error_and_the_engine_goes_on():
    model = lively_llama()
    engine = Engine(model, None, stop_token_ids=set())
    calls = []

    def flaky(module, args):  # the third forward (a decode step) fails
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    model.model.embed_tokens.register_forward_pre_hook(flaky)
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate([PROMPTS[0]], SamplingParams(max_tokens=5))
    handle = engine.submit(PROMPTS[1], SamplingParams(max_tokens=3))
    while not handle.done.is_set():
        engine._step()
    assert handle.completions()[0].token_ids == reference_greedy(model, PROMPTS[1], 3)
    assert engine.stats().running == 0


def test_aevents_streams_to_asyncio_and_cancels_when_left():
    model = lively_llama()
    slow_forwards(model, 0.005)
    engine = Engine(model, None, stop_token_ids=set())
    engine.start()

    async def read(handle, stop_after=None):
        seen = []
        async for event in handle.aevents():
            seen.append(event)
            if stop_after is not None and len(seen) == stop_after:
                break
        return seen

    try:
        handle = engine.submit(PROMPTS[0], SamplingParams(max_tokens=6, n=2))
        seen = asyncio.run(read(handle))
        assert sorted(e.index for e in seen if isinstance(e, Finish)) == [0, 1]
        assert len([e for e in seen if isinstance(e, Delta)]) == 12
        left = engine.submit(PROMPTS[1], SamplingParams(max_tokens=200))
        asyncio.run(read(left, stop_after=2))  # the reader goes away: the request is cancelled
        assert left.done.wait(10)
        assert left.completions()[0].finish_reason == "cancelled"
    finally:
        engine.shutdown(grace_s=0)


def test_stop_matcher_holds_back_possible_starts():
    m = StopMatcher(["END", "\n\n"])
    assert m.feed("Hello E") == "Hello "  # "E" may start "END"
    assert m.feed("x") == "Ex"
    assert m.feed("ok\n") == "ok"
    assert m.feed("EN") == "\n"  # "\nEN": "\n" cannot start a match followed by "EN"; "EN" may
    assert m.feed("D and more") == "" and m.matched
    m = StopMatcher(["END"])
    assert m.feed("abc EN") == "abc " and m.flush() == "EN"


def test_detokenizer_matches_full_decode(smol_tokenizer):
    text = "Café — naïve 😀 emoji, 中文字符 and code:\n    x = {'a': 1}  # ok"
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    d = Detokenizer(smol_tokenizer)
    pieces = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == smol_tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_across_two_tokens_is_cut_and_never_streamed(smol_tokenizer):
    model = lively_llama(vocab=len(smol_tokenizer))
    engine = Engine(model, smol_tokenizer, stop_token_ids=set())
    prompt = smol_tokenizer("The answer is", add_special_tokens=False)["input_ids"]
    full = engine.generate([prompt], SamplingParams(max_tokens=24))[0][0]
    pieces = [smol_tokenizer.decode(full.token_ids[:k], skip_special_tokens=True) for k in range(25)]

    def spanning(k: int) -> str | None:
        """Two characters of token k-1's text and two of token k's, if that is where the text first has them."""
        a, b = pieces[k - 1], pieces[k]
        if len(a) < len(pieces[k - 2]) + 2 or len(b) < len(a) + 2 or "\ufffd" in b:
            return None
        stop = a[-2:] + b[len(a):len(a) + 2]
        return stop if full.text.find(stop) == len(a) - 2 else None

    stop = next(s for s in map(spanning, range(3, 23)) if s)
    cut = full.text[:full.text.index(stop)]
    handle = engine.submit(prompt, SamplingParams(max_tokens=24, stop=[stop]))
    while not handle.done.is_set():
        engine._step()
    streamed = ""
    for event in handle.events(timeout=1):
        if isinstance(event, Delta):
            streamed += event.text
            assert cut.startswith(streamed)  # nothing after the cut was ever sent
    assert streamed == cut == handle.completions()[0].text
    assert event.finish_reason == "stop"


def _hf_generate(model, tokenizer, encoded: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """What tunesmith.evaluate.generate did before the engine: left padding, sorted by length."""
    from tunesmith.data.chat import end_of_turn_ids

    eos = sorted(end_of_turn_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(idx):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return outputs


CHAT = ["What is 2+2?", "Write a haiku about autumn leaves falling on a quiet pond.", "Name three colors.",
        "Explain how a bicycle works, including gears, brakes and the chain, for a curious ten year old.",
        "Translate 'good morning' to French.", "List the planets of the solar system in order from the sun.",
        "Hi", "Give me a recipe for pancakes with blueberries, step by step, with quantities."]


def test_greedy_equals_model_generate_on_smollm2(smol_model, smol_tokenizer):
    from tunesmith.evaluate.generate import prompt_ids

    encoded = [prompt_ids(smol_tokenizer, [{"role": "user", "content": q}]) for q in CHAT]
    want = _hf_generate(smol_model, smol_tokenizer, encoded, 48, batch_size=8)
    engine = Engine(smol_model, smol_tokenizer, max_batch=8)
    got = engine.generate(encoded, SamplingParams(max_tokens=48))
    assert [g[0].text for g in got] == want
    assert {g[0].finish_reason for g in got} <= {"stop", "length"}
    assert any(g[0].finish_reason == "stop" for g in got)  # some answers end with <|im_end|>
