"""`tunesmith serve`: the official `openai` client against a real uvicorn server on 127.0.0.1.

The main server runs the real generation engine on the bundled SmolLM2 (short greedy answers).
The tests that need a request to stay in flight (429, a client giving up, stopping) use a fake engine
with the same API whose tokens wait behind a gate, so their timing is certain.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx2
import openai
import pytest

from tunesmith.cli import main
from tunesmith.data.chat import render
from tunesmith.generation.engine import Engine, QueueFull
from tunesmith.generation.requests import Delta, Finish
from tunesmith.serve.app import create_app
from tunesmith.serve.auth import is_loopback
from tunesmith.serve.limits import Limits
from tunesmith.serve.server import make_server

KEY = "sk-tunesmith-test-key"
MODEL_ID = "smol"
CHAT = [{"role": "user", "content": "Name three colours."}]


# ---- a fake engine (tests only): the Engine API, canned text, tokens behind a gate ---------------------

class FakeHandle:
    """Yields the engine's canned reply, one token each time the gate is open; cancel() ends it."""

    def __init__(self, engine, prompt_ids, params):
        self.engine, self.prompt_tokens, self.params = engine, len(prompt_ids), params
        self.id = f"fake-{engine.submitted}"
        self.done = False

    def cancel(self):
        if not self.done:
            self.done = True
            self.engine.running -= 1

    async def aevents(self):
        ids = self.engine.reply_ids[: self.params.max_tokens]
        for count, tid in enumerate(ids, start=1):
            await asyncio.to_thread(self.engine.gate.wait)
            if self.done:
                yield Finish(0, "cancelled", count - 1)
                return
            yield Delta(0, self.engine.tokenizer.decode([tid]), [tid])
        self.cancel()
        yield Finish(0, "length", len(ids))


class FakeEngine:
    """The Engine API (submit, stats, start, shutdown) over FakeHandles; QueueFull beyond capacity."""

    def __init__(self, tokenizer, gate: threading.Event, max_batch=16, max_queue=256):
        self.tokenizer, self.gate, self.capacity = tokenizer, gate, max_batch + max_queue
        self.reply_ids = tokenizer("Red, green and blue are three colours of the rainbow.")["input_ids"]
        self.running = self.submitted = 0

    def submit(self, prompt_ids, params):
        if self.running >= self.capacity:
            raise QueueFull("full")
        self.running += 1
        self.submitted += 1
        return FakeHandle(self, prompt_ids, params)

    def stats(self):
        return SimpleNamespace(running=self.running, queued=0, prompt_tokens=0, generated_tokens=0, steps=0,
                               requests_finished=0)

    def start(self):
        pass

    def shutdown(self, grace_s=0):
        pass


# ---- a live server in a thread ---------------------------------------------------------------------

class Live:
    """uvicorn on 127.0.0.1 with a free port, in a daemon thread."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = make_server(app, "127.0.0.1", sock.getsockname()[1], grace=1, log_level="warning",
                                  access_log=False)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(smol_model, smol_tokenizer):
    engine = Engine(smol_model.eval(), smol_tokenizer, max_batch=4, max_queue=16)
    engine.start()
    live = Live(create_app(engine, smol_tokenizer, MODEL_ID, Limits(max_n=4, max_tokens=256), [KEY], 8192))
    yield SimpleNamespace(url=live.url, engine=engine, tokenizer=smol_tokenizer, app=live.server.config.app)
    live.stop()
    engine.shutdown(1)


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _chat(client, **kw):
    return client.chat.completions.create(model=MODEL_ID, messages=CHAT, **{"max_tokens": 12, "temperature": 0, **kw})


# ---- generation ----------------------------------------------------------------------------------------

def test_chat_stream_equals_non_stream_and_usage_counts_the_rendered_prompt(client, served):
    whole = _chat(client)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and whole.model == MODEL_ID
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    prompt_ids = render(served.tokenizer, CHAT, add_generation_prompt=True)
    assert whole.usage.prompt_tokens == len(prompt_ids)
    assert 0 < whole.usage.completion_tokens <= 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(_chat(client, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert all(c.usage is None for c in chunks)


def test_stream_with_include_usage_ends_with_a_usage_chunk(client):
    whole = _chat(client)
    chunks = list(_chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_cuts_the_text_before_it(client):
    text = _chat(client).choices[0].message.content
    stop = text[len(text) // 2:][:3]  # a piece from the middle of the greedy answer
    assert stop.strip(), text
    cut = _chat(client, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _chat(client, stop=stop, stream=True))
    assert streamed == text[: text.index(stop)]


def test_n_gives_that_many_choices_and_counts_all_their_tokens(client):
    res = _chat(client, n=2, temperature=1.0, seed=3)
    assert [c.index for c in res.choices] == [0, 1]
    assert all(c.message.content for c in res.choices)
    assert res.usage.completion_tokens >= 2
    streamed = list(_chat(client, n=2, temperature=1.0, seed=3, stream=True))
    assert {c.choices[0].index for c in streamed} == {0, 1}


def test_logprobs_have_one_entry_per_token_with_top_alternatives(client):
    res = _chat(client, logprobs=True, top_logprobs=3)
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs), reverse=True)
        assert item.top_logprobs[0].token == item.token  # greedy: the chosen token is the most likely
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    assert _chat(client).choices[0].logprobs is None


def test_completions_take_plain_text_and_stream_the_same(client, served):
    prompt = "The three primary colours are"
    res = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    assert res.object == "text_completion" and res.choices[0].text
    assert res.usage.prompt_tokens == len(served.tokenizer(prompt)["input_ids"])
    assert len(res.choices[0].logprobs.tokens) == res.usage.completion_tokens
    assert all(len(t) == 2 for t in res.choices[0].logprobs.top_logprobs)
    streamed = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == res.choices[0].text


def test_models_health_and_metrics(client, served):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert httpx2.get(served.url + "/health").json()["status"] == "ok"  # no key needed
    _chat(client, max_tokens=2)
    text = httpx2.get(served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'tunesmith_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'tunesmith_requests_total{route="/health",status="200"} ' in text
    assert "tunesmith_time_to_first_token_seconds_count" in text and "tunesmith_running " in text
    assert int(text.split("\ntunesmith_completion_tokens_total ")[1].split()[0]) > 0


# ---- refusals ------------------------------------------------------------------------------------------

def test_a_wrong_or_missing_key_is_401_but_health_needs_none(served):
    bad = openai.OpenAI(base_url=served.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=2)
    assert err.value.code == "invalid_api_key"
    assert httpx2.get(served.url + "/v1/models").status_code == 401
    assert httpx2.get(served.url + "/metrics").status_code == 401


@pytest.mark.parametrize("kw, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 9}, "n"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"extra_body": {"seed": "7"}}, "seed"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": []}, "messages"),
])
def test_a_bad_value_is_400_naming_the_param(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{"model": MODEL_ID, "messages": CHAT, "max_tokens": 2, **kw})
    assert err.value.param == param, err.value.body
    assert param.split("[")[0] in err.value.message


def test_malformed_json_too_large_body_and_unknown_model(served, client):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    res = httpx2.post(served.url + "/v1/chat/completions", content=b'{"model": "smol", "messages": [', headers=auth)
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"]["message"]
    big = json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 1_100_000}]})
    res = httpx2.post(served.url + "/v1/chat/completions", content=big.encode(), headers=auth)
    assert res.status_code == 413 and res.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=CHAT, max_tokens=2)
    ok = client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=2, extra_body={"no_such": 1})
    assert ok.choices[0].message.content is not None  # unknown fields are ignored, like OpenAI does


def test_a_full_server_answers_429_with_retry_after(smol_tokenizer):
    gate = threading.Event()
    engine = FakeEngine(smol_tokenizer, gate, max_batch=1, max_queue=0)
    live = Live(create_app(engine, smol_tokenizer, MODEL_ID, Limits(max_concurrent=1, max_queue=0), [KEY]))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    try:
        first = _chat(client, stream=True)
        next(iter(first))  # admitted: the role chunk arrived; the gate holds every token
        with pytest.raises(openai.RateLimitError) as err:
            _chat(client)
        assert err.value.response.headers["retry-after"] == "1"
        gate.set()
        assert "".join(c.choices[0].delta.content or "" for c in first)
        assert _chat(client).choices[0].message.content  # a slot is free again
    finally:
        gate.set()
        live.stop()


def test_a_client_that_leaves_mid_stream_frees_its_slot(client, served):
    stream = _chat(client, stream=True, max_tokens=200)
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 2:
            break
    assert served.engine.stats().running >= 1
    stream.close()
    deadline = time.time() + 15
    while served.engine.stats().running and time.time() < deadline:
        time.sleep(0.05)
    assert served.engine.stats().running == 0
    assert served.app.state.serve.admission.in_flight == 0


def test_a_non_streaming_client_that_gives_up_frees_its_slot(smol_tokenizer):
    gate = threading.Event()
    engine = FakeEngine(smol_tokenizer, gate)
    live = Live(create_app(engine, smol_tokenizer, MODEL_ID))
    try:
        body = {"model": MODEL_ID, "messages": CHAT, "max_tokens": 4}
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(live.url + "/v1/chat/completions", json=body, timeout=0.5)
        deadline = time.time() + 5
        while engine.running and time.time() < deadline:
            time.sleep(0.05)
        assert engine.running == 0
    finally:
        gate.set()
        live.stop()


def test_stopping_lets_a_stream_in_flight_finish(smol_tokenizer):
    gate = threading.Event()
    engine = FakeEngine(smol_tokenizer, gate)
    live = Live(create_app(engine, smol_tokenizer, MODEL_ID))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=30)
    stream = _chat(client, stream=True)
    next(iter(stream))
    live.server.should_exit = True  # what SIGINT/SIGTERM do
    time.sleep(0.3)
    with pytest.raises(openai.APIConnectionError):  # no new connections while draining
        openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=5).models.list()
    gate.set()
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length" and "".join(c.choices[0].delta.content or "" for c in chunks)
    live.thread.join(10)
    assert not live.thread.is_alive()


# ---- the verb ------------------------------------------------------------------------------------------

def test_a_public_host_without_a_key_is_refused_before_the_model_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    assert main(["serve", "no-such-model", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "API key" in err and "Traceback" not in err
    assert main(["serve", "no-such-model", "--api-key-file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("# no key yet\n\n")
    assert main(["serve", "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "empty.txt")]) == 2
    assert main(["serve", "--port", "0"]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "no-such-model", "--port", str(busy.getsockname()[1])]) == 1
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_the_verb_serves_a_model_and_stops_gracefully_on_sigterm(tmp_path):
    (tmp_path / "keys.txt").write_text("# keys\nsk-one\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(port), "--api-key-file",
                             str(tmp_path / "keys.txt"), "--served-model-name", "tiny", "--max-tokens", "8",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-one", max_retries=0, timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                assert [m.id for m in client.models.list().data] == ["tiny"]
                break
            except openai.APIConnectionError:
                time.sleep(0.3)
        stream = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, stream=True)
        next(iter(stream))
        proc.send_signal(signal.SIGTERM)  # in flight: the stream still ends normally
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped (SIGTERM)" in out and "Traceback" not in out


def test_a_run_directory_serves_its_merged_model_under_the_run_name(tmp_path):
    from tunesmith.stages.serve import ServeConfig, served_model

    (tmp_path / "myrun" / "model").mkdir(parents=True)
    (tmp_path / "myrun" / "model" / "config.json").write_text("{}")
    model, model_id = served_model(ServeConfig(model=str(tmp_path / "myrun")))
    assert (model.name, model_id) == (str(tmp_path / "myrun" / "model"), "myrun")
    assert served_model(ServeConfig(model="x/y/m.gguf"))[1] == "m"
    assert served_model(ServeConfig(model="smollm2-135m-instruct", served_model_name="chat"))[1] == "chat"


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))
