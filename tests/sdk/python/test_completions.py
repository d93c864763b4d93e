"""Legacy /v1/completions through the official Python SDK: prompt forms, echo, defaults, streaming."""

from __future__ import annotations

import openai

from helpers import names_param, raw_json, read_sse
from openai_spec import validate, validate_completion_chunk

HELLO_ID = 19556  # "Hello" in SmolLM2's tokenizer (no BOS is added: tokenizer.ggml.add_bos_token = false)


def test_string_prompt_shape(client, model_id):
    raw = client.completions.with_raw_response.create(model=model_id, prompt="The capital of France is", max_tokens=8)
    body = raw_json(raw)
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion" and body["model"] == model_id
    choice = body["choices"][0]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert "logprobs" in choice
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_defaults_to_16(client, model_id):
    r = client.completions.create(model=model_id, prompt="Once upon a time", temperature=0)
    assert r.usage.completion_tokens <= 16
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 16


def test_token_id_prompt_equals_string_prompt(client, model_id):
    by_text = client.completions.create(model=model_id, prompt="Hello", max_tokens=8, temperature=0)
    by_ids = client.completions.create(model=model_id, prompt=[HELLO_ID], max_tokens=8, temperature=0)
    assert by_text.usage.prompt_tokens == 1
    assert by_ids.usage.prompt_tokens == 1
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_array_prompt_forms(client, model_id):
    single = client.completions.create(model=model_id, prompt="Two plus two is", max_tokens=4, temperature=0)
    # One-element arrays (of a string, of a token-id list) are the same request as the bare prompt.
    raw = client.completions.with_raw_response.create(
        model=model_id, prompt=["Two plus two is"], max_tokens=4, temperature=0)
    body = raw_json(raw)
    validate("CreateCompletionResponse", body)
    assert [c["text"] for c in body["choices"]] == [single.choices[0].text]
    hello = client.completions.create(model=model_id, prompt="Hello", max_tokens=4, temperature=0)
    nested = client.completions.create(model=model_id, prompt=[[HELLO_ID]], max_tokens=4, temperature=0)
    assert nested.choices[0].text == hello.choices[0].text


SEVERAL = ["The sky is", "Two plus two is", "Hello"]


def test_several_prompts_one_choice_each(client, model_id):
    singles = [client.completions.create(model=model_id, prompt=p, max_tokens=4, temperature=0) for p in SEVERAL]
    raw = client.completions.with_raw_response.create(model=model_id, prompt=SEVERAL, max_tokens=4, temperature=0)
    body = raw_json(raw)
    validate("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    # Greedy: each prompt's text is exactly what it gets on its own.
    assert [c["text"] for c in body["choices"]] == [s.choices[0].text for s in singles]
    assert [c["finish_reason"] for c in body["choices"]] == [s.choices[0].finish_reason for s in singles]
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(s.usage.prompt_tokens for s in singles)
    assert usage["completion_tokens"] == sum(s.usage.completion_tokens for s in singles)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Token-id lists (int[][]) and echo work per prompt too.
    ids = client.completions.create(
        model=model_id, prompt=[[HELLO_ID], [HELLO_ID, 28]], max_tokens=4, temperature=0, echo=True)
    assert [c.index for c in ids.choices] == [0, 1]
    assert ids.choices[0].text == "Hello" + singles[2].choices[0].text
    assert ids.choices[1].text.startswith("Hello")


def test_too_many_prompts_is_a_named_400(client, model_id):
    try:
        client.with_options(max_retries=0).completions.create(
            model=model_id, prompt=[f"p{i}" for i in range(17)], max_tokens=1)
    except openai.BadRequestError as err:
        assert names_param(err, "prompt"), err.body
    else:
        raise AssertionError("17 prompts were accepted")


def test_several_prompts_stream(http, client, model_id):
    sync = client.completions.create(model=model_id, prompt=SEVERAL[:2], max_tokens=4, temperature=0)
    body = {"model": model_id, "prompt": SEVERAL[:2], "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    _, events = read_sse(http, "/v1/completions", body)
    for event in events:
        validate_completion_chunk(event)
    assert len({e["id"] for e in events}) == 1
    *content, last = events
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == sync.usage.completion_tokens
    assert last["usage"]["prompt_tokens"] == sync.usage.prompt_tokens
    texts, finishes, order = {}, {}, []
    for e in content:
        assert e.get("usage") is None and len(e["choices"]) == 1
        choice = e["choices"][0]
        order.append(choice["index"])
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert order == sorted(order) and set(order) == {0, 1}, "prompts run one after another"
    assert texts == {0: sync.choices[0].text, 1: sync.choices[1].text}
    assert finishes == {0: [sync.choices[0].finish_reason], 1: [sync.choices[1].finish_reason]}


def test_echo_prepends_prompt(client, model_id):
    prompt = "The quick brown fox"
    plain = client.completions.create(model=model_id, prompt=prompt, max_tokens=6, temperature=0)
    echoed = client.completions.create(model=model_id, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_suffix_is_rejected(client, model_id):
    try:
        client.completions.create(model=model_id, prompt="def f(", suffix="return x", max_tokens=4)
    except openai.BadRequestError as err:
        assert names_param(err, "suffix"), err.body
    else:
        raise AssertionError("suffix was silently accepted")


def test_logprobs_shape(client, model_id):
    raw = client.completions.with_raw_response.create(
        model=model_id, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    body = raw_json(raw)
    validate("CreateCompletionResponse", body)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert lp is not None, "logprobs was silently ignored"
    n = body["usage"]["completion_tokens"]
    assert n > 0
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert "".join(lp["tokens"]) == choice["text"]
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert all(0 < len(top) <= 2 for top in lp["top_logprobs"])
    # Greedy: the chosen token is the most likely one, so it is among the top 2 with its own logprob.
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert top.get(token) == logprob and logprob == max(top.values()), (token, logprob, top)
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and all(offsets[i + 1] == offsets[i] + len(lp["tokens"][i]) for i in range(n - 1))
    # Same text as without logprobs.
    plain = client.completions.create(model=model_id, prompt="The sky is", max_tokens=4, temperature=0)
    assert plain.choices[0].text == choice["text"]


def test_stream_chunks(http, client, model_id):
    body = {"model": model_id, "prompt": "The sea is", "max_tokens": 8, "temperature": 0, "stream": True}
    _, events = read_sse(http, "/v1/completions", body)
    for event in events:
        validate_completion_chunk(event)
        assert event["object"] == "text_completion"
    assert len({e["id"] for e in events}) == 1
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"] is not None]
    assert finishes in (["stop"], ["length"])
    streamed = "".join(e["choices"][0]["text"] for e in events)
    sync = client.completions.create(model=model_id, prompt="The sea is", max_tokens=8, temperature=0)
    assert streamed == sync.choices[0].text
