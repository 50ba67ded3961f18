"""The serving engine and request parsing (koinon.serve): batched KV-cache generation gives exactly the tokens of
``transformers``' ``generate``; bad requests get OpenAI-style errors; stop strings cut and hold back text."""

from __future__ import annotations

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.serve.engine import Engine, Request
from koinon.serve.server import BadRequest, Choice, Served, parse_completion
from koinon.training.model import build_model, encode_text, flat_parameters, load_flat_parameters

PROMPTS = ["def f(x):", "import os\nimport sys", "a", "Hello, world! This is a longer prompt than the others"]


@pytest.fixture(scope="module")
def model():
    m = build_model(TrainingConfig())
    torch.manual_seed(7)  # θ₀ plus noise: a model whose greedy output is not one repeated byte
    load_flat_parameters(m, flat_parameters(m) + 0.02 * torch.randn(flat_parameters(m).shape))
    return m.eval()


def reference(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def drain(r: Request) -> tuple[list[int], str]:
    tokens = []
    while True:
        token, reason = r.tokens.get(timeout=60)
        if token is None:
            return tokens, reason
        tokens.append(token)


def test_one_prompt_greedy_is_exactly_transformers_generate(model):
    engine = Engine(model)
    try:
        for text in PROMPTS:
            prompt = encode_text(text)
            got, reason = drain(engine.submit(Request(prompt=prompt, max_tokens=40)))
            want = reference(model, prompt, 40)
            assert got == want[: len(got)] and (len(got) == 40 or reason == "stop"), text
            assert reason == ("length" if len(got) == 40 else "stop")
    finally:
        engine.close()


def test_requests_arriving_together_run_as_one_batch_with_the_same_tokens(model):
    engine = Engine(model, start=False)
    try:
        requests = [engine.submit(Request(prompt=encode_text(t), max_tokens=30)) for t in PROMPTS]
        assert engine.active == len(PROMPTS)
        engine.start()
        got = [drain(r)[0] for r in requests]
        assert (engine.batches, engine.rows) == (1, len(PROMPTS)), "the four requests were not batched together"
        for text, tokens in zip(PROMPTS, got, strict=True):
            assert tokens == reference(model, encode_text(text), 30)[: len(tokens)], text
        assert engine.active == 0
    finally:
        engine.close()


def test_context_caps_max_tokens_and_cancel_frees_the_row(model):
    engine = Engine(model, max_batch=2, start=False)
    try:
        long_prompt = encode_text("x" * 120)  # context 128: at most 8 more tokens
        capped = engine.submit(Request(prompt=long_prompt, max_tokens=100))
        cancelled = engine.submit(Request(prompt=encode_text("y"), max_tokens=100))
        cancelled.cancel()
        engine.start()
        tokens, reason = drain(capped)
        assert reason in ("length", "stop") and len(tokens) <= 8
        assert drain(cancelled) == ([], "cancelled")
        with pytest.raises(ValueError, match="1 to 127 tokens"):
            engine.submit(Request(prompt=encode_text("z" * 128), max_tokens=1))
    finally:
        engine.close()


def test_a_seed_makes_sampling_reproducible(model):
    engine = Engine(model)
    try:
        runs = [
            drain(engine.submit(Request(prompt=encode_text("ab"), max_tokens=30, temperature=1.0, seed=s)))[0]
            for s in (1, 1, 2)
        ]
        assert runs[0] == runs[1] and runs[0] != runs[2]
    finally:
        engine.close()


SERVED = Served(theta="ab" * 32, release="v1", round=3, swarm="cd" * 32, created=0)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ([], 400, None),
        ({"prompt": "x"}, 400, "model"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
        ({"model": "koinon/v1"}, 400, "prompt"),
        ({"model": "koinon/v1", "prompt": 5}, 400, "prompt"),
        ({"model": "koinon/v1", "prompt": [1, 999]}, 400, "prompt"),
        ({"model": "koinon/v1", "prompt": "x" * 128}, 400, "prompt"),
        ({"model": "koinon/v1", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "koinon/v1", "prompt": "x" * 100, "max_tokens": 40}, 400, "max_tokens"),
        ({"model": "koinon/v1", "prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),
        ({"model": "koinon/v1", "prompt": "x", "max_tokens": True}, 400, "max_tokens"),
        ({"model": "koinon/v1", "prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "koinon/v1", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "koinon/v1", "prompt": "x", "n": 2}, 400, "n"),
        ({"model": "koinon/v1", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "koinon/v1", "prompt": "x", "stream": "yes"}, 400, "stream"),
        ({"model": "koinon/v1", "prompt": "x", "logprobs": 2}, 400, "logprobs"),
        ({"model": "koinon/v1", "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ],
)
def test_bad_requests_name_the_parameter(body, status, param):
    with pytest.raises(BadRequest) as e:
        parse_completion(body, SERVED, 128)
    assert (e.value.status, e.value.param) == (status, param), e.value.message


def test_good_requests_in_openai_forms():
    for model in ("koinon/v1", "v1", "ab" * 32):
        job = parse_completion({"model": model, "prompt": ["hi", "yo"], "max_tokens": 5, "stop": "\n"}, SERVED, 128)
        assert job.prompts == [encode_text("hi"), encode_text("yo")] and job.stop == ["\n"] and job.max_tokens == 5
    job = parse_completion({"model": "v1", "prompt": [40, 41], "temperature": 0, "stream": True}, SERVED, 128)
    assert job.prompts == [[40, 41]] and job.max_tokens == 16 and job.stream and job.temperature == 0.0
    assert parse_completion({"model": "v1", "prompt": ""}, SERVED, 128).prompts == [[1]]


def test_stop_strings_cut_the_text_and_hold_back_a_possible_start():
    c = Choice(0, ["END"])
    for t in encode_text("abcE"):
        c.add(t)
    assert c.take()[0] == "ab"  # "cE" could begin "END"
    for t in encode_text("ND more"):
        c.add(t)
        if c.finish:
            break
    assert c.finish == "stop" and c.text == "abc" and c.take()[0] == "c"
    u = Choice(0, [])
    for t in encode_text("é"):  # two bytes, one character
        u.add(t)
    assert u.text == "é"
