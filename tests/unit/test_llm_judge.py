"""Tests of the LLM judge against a local fake chat-completions server (no network, no key leaks)."""
from __future__ import annotations

import json
import logging
import socket
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest

from vlminterp.scoring.llm_judge import (LLM_SCORE_COLUMNS, LLMJudge, LLMJudgeError, LLMJudgeSpec, cache_key,
                                         build_messages, match_object_lists, normalise_object, parse_object_list,
                                         spec_summary)
from vlminterp.scoring.vocabulary import load_vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the fake server

from fake_chat_server import FakeChatServer, objects_by_rule  # noqa: E402

KEY_ENV = "VLMINTERP_TEST_JUDGE_KEY"
SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-LEAK"
REF = "There is a red circle, a blue square and an orange star."
CAND = "There is a red circle and a green hexagon."


@pytest.fixture()
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


@pytest.fixture()
def server():
    with FakeChatServer() as srv:
        yield srv


def make_spec(server, tmp_path, **kw) -> LLMJudgeSpec:
    values = dict(base_url=server.base_url, model="fake-4o", api_key_env=KEY_ENV, seed=7, timeout=5.0,
                  retries=2, backoff=0.0, cache_path=str(tmp_path / "cache" / "llm.jsonl"))
    values.update(kw)
    return LLMJudgeSpec(**values)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_fake_server_rule():
    assert objects_by_rule(f"x <description>\n{REF}\n</description>") == ["red circle", "blue square", "orange star"]


def test_request_shape_and_auth_header(server, tmp_path, key):
    with LLMJudge(make_spec(server, tmp_path)) as judge:
        assert judge.list_objects(REF) == ["red circle", "blue square", "orange star"]
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    body = req["body"]
    assert body["model"] == "fake-4o" and body["temperature"] == 0 and body["seed"] == 7
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert REF in body["messages"][1]["content"] and "JSON array" in body["messages"][1]["content"]
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_score_with_vocabulary(server, tmp_path, key):
    with LLMJudge(make_spec(server, tmp_path), vocabulary=load_vocabulary("shapes")) as judge:
        s = judge.score(CAND, REF)
        assert (s.matched, s.hallucinated, s.missed) == (("circle",), ("hexagon",), ("square", "star"))
        assert (s.precision, s.recall) == (0.5, 1 / 3)
        assert judge.score(REF, REF).f1 == 1.0
        assert judge.requests_sent == 2  # REF asked once, then answered from the cache


def test_cache_makes_a_rerun_free_and_holds_no_secret(server, tmp_path, key, caplog):
    caplog.set_level(logging.DEBUG)
    df = pd.DataFrame({"image_id": [1, 1, 2], "condition": ["none", "ko", "none"],
                       "description": [REF, CAND, "A dog, a cat."], "reference": [REF, REF, "A dog, a cat."]})
    with LLMJudge(make_spec(server, tmp_path), vocabulary=load_vocabulary("shapes")) as judge:
        first = judge.judge_table(df, "description", "reference")
    assert len(server.requests) == 3  # one per distinct description
    assert list(first.columns) == [*df.columns, *LLM_SCORE_COLUMNS]
    assert first["f1"].tolist()[0] == 1.0 and first["candidate_objects"].iloc[1] == "red circle;green hexagon"
    assert first["matched"].iloc[2] == "cat;dog"  # free-text objects outside the vocabulary still match
    with LLMJudge(make_spec(server, tmp_path), vocabulary=load_vocabulary("shapes")) as judge:
        second = judge.judge_table(df, "description", "reference")
        assert judge.requests_sent == 0 and judge.cache_hits == 6
    assert len(server.requests) == 3
    pd.testing.assert_frame_equal(first, second)
    cache_text = (tmp_path / "cache" / "llm.jsonl").read_text()
    assert len(cache_text.splitlines()) == 3
    assert all("objects" in json.loads(line) for line in cache_text.splitlines())
    assert_no_secret(cache_text, caplog.text)
    # a different model or seed is a different cache key
    other = make_spec(server, tmp_path, seed=8)
    assert cache_key(other, build_messages(REF)) != cache_key(make_spec(server, tmp_path), build_messages(REF))


def test_chatty_answer_is_parsed(server, tmp_path, key):
    server.mode = "chatty"
    with LLMJudge(make_spec(server, tmp_path)) as judge:
        assert judge.list_objects(CAND) == ["red circle", "green hexagon"]


@pytest.mark.parametrize("mode, match", [
    ("garbage", "without a JSON array"),
    ("not_json", "did not answer with a chat completion"),
    ("no_choices", "did not answer with a chat completion"),
    ("unauthorized", "HTTP 401"),
])
def test_bad_answers_raise_clear_errors_without_the_key(server, tmp_path, key, caplog, mode, match):
    caplog.set_level(logging.DEBUG)
    server.mode = mode
    spec = make_spec(server, tmp_path)
    with LLMJudge(spec) as judge, pytest.raises(LLMJudgeError, match=match) as info:
        judge.list_objects(REF)
    assert len(server.requests) == 1  # not retried
    message = str(info.value)
    assert spec.endpoint in message
    assert_no_secret(message, repr(info.value), "".join(traceback.format_exception(info.value)), caplog.text)
    if mode == "unauthorized":
        assert "***" in message  # the server echoed the header; the judge scrubbed it
    # nothing unusable was cached: the next run asks again
    server.mode = "ok"
    with LLMJudge(spec) as judge:
        assert judge.list_objects(REF) and judge.requests_sent == 1


def test_transient_failures_are_retried(server, tmp_path, key, caplog):
    server.fail_next(503, 429)
    with LLMJudge(make_spec(server, tmp_path)) as judge:
        assert judge.list_objects(CAND) == ["red circle", "green hexagon"]
        assert judge.requests_sent == 3
    server.fail_next(500, 500, 500)
    with LLMJudge(make_spec(server, tmp_path, retries=2)) as judge, pytest.raises(LLMJudgeError, match="3 attempt"):
        judge.list_objects(REF)
    assert_no_secret(caplog.text)


def test_unreachable_endpoint_names_the_url_not_the_key(tmp_path, key, caplog):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = LLMJudgeSpec(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=KEY_ENV, retries=1,
                        backoff=0.0, timeout=2.0)
    with LLMJudge(spec) as judge, pytest.raises(LLMJudgeError, match="no answer from") as info:
        judge.list_objects(REF)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(info.value)
    assert_no_secret(str(info.value), "".join(traceback.format_exception(info.value)), caplog.text)


def test_missing_key_variable_fails_before_any_request(server, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with LLMJudge(make_spec(server, tmp_path)) as judge, pytest.raises(LLMJudgeError, match=KEY_ENV):
        judge.list_objects(REF)
    assert server.requests == []


def test_no_key_for_local_servers_and_empty_descriptions(server, tmp_path):
    with LLMJudge(make_spec(server, tmp_path, api_key_env=None, cache_path=None)) as judge:
        assert judge.list_objects("   ") == [] and judge.list_objects(None) == []
        assert server.requests == []
        assert judge.score("", REF).f1 == 0.0
    assert "Authorization" not in server.requests[0]["headers"]


def test_spec_validation_never_echoes_a_pasted_key():
    with pytest.raises(ValueError, match="NAME") as info:
        LLMJudgeSpec(base_url="https://api.example.com/v1", model="m", api_key_env=SECRET)
    assert_no_secret(str(info.value))
    with pytest.raises(ValueError, match="credentials") as info:
        LLMJudgeSpec(base_url=f"https://user:{SECRET}@api.example.com/v1", model="m")
    assert_no_secret(str(info.value))
    for bad in [dict(base_url="ftp://x/v1"), dict(temperature=-1.0), dict(timeout=0), dict(retries=-1),
                dict(base_url="https://x/v1?api-version=1"), dict(model="")]:
        with pytest.raises(ValueError):
            LLMJudgeSpec(**{"base_url": "https://api.example.com/v1", "model": "m", **bad})
    spec = LLMJudgeSpec(base_url="https://api.example.com/v1/", model="m")
    assert spec.endpoint == "https://api.example.com/v1/chat/completions"
    assert spec_summary(spec)["api_key_env"] == "OPENAI_API_KEY"


@pytest.mark.parametrize("content, expected", [
    ('["dog", "cat"]', ["dog", "cat"]),
    ('Objects: ["dog", " frisbee ", ""] (two).', ["dog", "frisbee"]),
    ('```json\n[]\n```', []),
    ('See [1]. Answer: ["dog"]', ["dog"]),
    ('[[1, 2], ["dog"]]', ["dog"]),
])
def test_parse_object_list(content, expected):
    assert parse_object_list(content) == expected


@pytest.mark.parametrize("content", ["no list here", "[1, 2]", '["dog", 3]', "[unclosed", '{"objects": "dog"}'])
def test_parse_object_list_rejects_garbage(content):
    with pytest.raises(ValueError):
        parse_object_list(content)


def test_matching_plurals_and_synonyms():
    assert normalise_object("  The Hot-Dog. ") == "hot dog"
    cand, ref = match_object_lists(["dogs", "knives", "a wheel"], ["dog", "knife", "wheels"])
    assert cand == ref == {"dog", "knife", "wheel"}
    coco = load_vocabulary("coco")
    cand, ref = match_object_lists(["puppies", "wooden dining table", "lamp"], ["dog", "table", "lamps"], coco)
    assert cand == ref == {"dog", "dining table", "lamp"}


def test_torn_cache_line_is_skipped_and_repaired(server, tmp_path, key, caplog):
    spec = make_spec(server, tmp_path)
    with LLMJudge(spec) as judge:
        judge.list_objects(REF)
    path = Path(spec.cache_path)
    with path.open("a") as handle:
        handle.write('{"key": "abc", "objec')  # a crash mid-write
    with LLMJudge(spec) as judge:
        assert judge.list_objects(REF) and judge.requests_sent == 0
        judge.list_objects(CAND)
    assert "unreadable line 2" in caplog.text
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["objects"] == ["red circle", "green hexagon"]
    with LLMJudge(spec) as judge:
        judge.list_objects(REF)
        judge.list_objects(CAND)
        assert judge.requests_sent == 0
