"""The exported GGUF in real llama.cpp (llama-cpp-python): same tokens as tunesmith's own model.

Slow, and needs llama-cpp-python; without it every test here fails (not skips) with the install
command. Run: flock -x /tmp/tunesmith-cpu.lock .venv/bin/python -m pytest -m slow tests/test_gguf_llamacpp.py

The bundled SmolLM2 is exported to f32 and f16. Prompts are the first 20 held-out task items,
rendered with the Hugging Face chat template; llama.cpp is fed those exact ids (so the comparison
is of the model, not of two tokenizers; tokenization is compared separately) and decodes greedily,
up to 24 new tokens, stopping at EOS / <|im_end|>, like tunesmith's greedy generation.

Acceptance: token-identical continuations. The only allowed difference is a near-tie: at the first
differing position, the Hugging Face fp32 logits of the two candidate tokens differ by at most
TIE[qtype] (f32 1e-3, i.e. float rounding only; f16 0.1, the noise of f16 weights and f16
activations in ggml's f16 matmuls); after a legitimate split the rest of the sequence is not
compared.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

N_PROMPTS = 20
MAX_NEW = 24
TIE = {"f32": 1e-3, "f16": 0.1}
INSTALL = ("llama-cpp-python is not installed, and these tests run the exported GGUF in real llama.cpp. "
           "Install it with `.venv/bin/pip install llama-cpp-python` (it builds llama.cpp from source with "
           "CMake: about 15 min on 2 cores), or from a wheel built earlier: "
           "`.venv/bin/pip install /work/wheels/llama_cpp_python-*.whl`")


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        pytest.fail(f"{INSTALL} ({exc})", pytrace=False)
    return llama_cpp


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Prompt ids, the HF fp32 model and tokenizer, and the bundled model exported to f32 and f16."""
    from tunesmith.data.tasks import generate_train_eval
    from tunesmith.evaluate.generate import prompt_ids
    from tunesmith.export.gguf import write_gguf
    from tunesmith.models import load_model, load_tokenizer, local_model_dir

    _llama_cpp()
    quiet = lambda *a: None  # noqa: E731
    tokenizer = load_tokenizer(None, log=quiet)
    model = load_model(None, log=quiet).eval()
    items = generate_train_eval(0, 260, 0)[1][:N_PROMPTS]
    conversations = [[{"role": "user", "content": it.prompt}] for it in items]
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    out = tmp_path_factory.mktemp("gguf")
    files = {q: out / f"smollm2-{q}.gguf" for q in TIE}
    for q, path in files.items():
        write_gguf(local_model_dir(None, log=quiet), path, q, log=quiet)
    return {"tokenizer": tokenizer, "model": model, "conversations": conversations, "prompts": prompts,
            "files": files}


def _stop_ids(tokenizer) -> set[int]:
    from tunesmith.data.chat import end_of_turn_ids

    return end_of_turn_ids(tokenizer)


@torch.no_grad()
def _hf_greedy(model, ids: list[int], stop: set[int]) -> list[int]:
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=sorted(stop),
                         pad_token_id=sorted(stop)[0], temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def _cpp_greedy(llm, ids: list[int], stop: set[int]) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token in stop or len(out) >= MAX_NEW:
            break
    return out


@torch.no_grad()
def _gap(model, ids: list[int], prefix: list[int], want: int, got: int) -> float:
    """HF logit of its own choice minus that of llama.cpp's choice, after prompt + common prefix."""
    logits = model(torch.tensor([ids + prefix])).logits[0, -1]
    return float(logits[want] - logits[got])


def _open(llama_cpp, path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=2048, verbose=False, logits_all=False, n_threads=2)


def test_reference_is_tunesmiths_own_generation(setup):
    """The HF greedy ids used below decode to what tunesmith.evaluate.generate.generate produces."""
    from tunesmith.evaluate.generate import generate

    tok, model = setup["tokenizer"], setup["model"]
    stop = _stop_ids(tok)
    texts = generate(model, tok, setup["conversations"], max_new_tokens=MAX_NEW, batch_size=1)
    for ids, text in zip(setup["prompts"], texts):
        assert tok.decode(_hf_greedy(model, ids, stop), skip_special_tokens=True) == text


@pytest.mark.parametrize("qtype", sorted(TIE))
def test_llamacpp_tokenizes_like_hf(qtype, setup):
    llama_cpp = _llama_cpp()
    tok = setup["tokenizer"]
    llm = _open(llama_cpp, setup["files"][qtype])
    assert llm.metadata.get("tokenizer.ggml.pre") == "smollm"
    assert llm.metadata.get("tokenizer.chat_template") == tok.chat_template
    assert llm.token_eos() == tok.eos_token_id
    for conv, ids in zip(setup["conversations"], setup["prompts"]):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids
    # add_bos_token is false, as in the HF tokenizer: asking llama.cpp for special tokens adds no BOS
    assert llm.tokenize(b"Hello world", add_bos=True, special=True) == tok("Hello world")["input_ids"]


@pytest.mark.parametrize("qtype", sorted(TIE))
def test_llamacpp_greedy_tokens_match_hf(qtype, setup):
    llama_cpp = _llama_cpp()
    tok, model = setup["tokenizer"], setup["model"]
    stop = _stop_ids(tok)
    llm = _open(llama_cpp, setup["files"][qtype])
    identical, report, failures = 0, [], []
    for i, ids in enumerate(setup["prompts"]):
        want, got = _hf_greedy(model, ids, stop), _cpp_greedy(llm, ids, stop)
        if want == got:
            identical += 1
            continue
        k = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        if k == min(len(want), len(got)):  # one is a prefix of the other: a stop/length difference
            failures.append(f"prompt {i}: lengths differ ({len(want)} vs {len(got)}) after identical tokens")
            continue
        gap = _gap(model, ids, want[:k], want[k], got[k])
        line = (f"prompt {i}: first difference at new token {k}: HF {tok.decode([want[k]])!r} vs llama.cpp "
                f"{tok.decode([got[k]])!r}, HF logit gap {gap:.4f}")
        (report if gap <= TIE[qtype] else failures).append(line)
    print(f"\n{qtype}: {identical}/{len(setup['prompts'])} token-identical; near-ties: {report}")
    assert not failures, f"{qtype}: llama.cpp differs from HF fp32 beyond a near-tie:\n" + "\n".join(failures)
