"""Tables keep every token's text: each token of every real tokenizer in ../shared/fixtures
(Llama 2 = LLaVA-1.5's, and the processors/ folders) survives write -> gather -> write -> read
exactly, as N2's top-k table stores it; a malformed row fails naming its file and line."""
from __future__ import annotations

import gzip

import pandas as pd
import pytest

from shared_fixtures import FIXTURES, LLAMA2_TOKENIZER, require
from vlminterp.experiments.neo.logit_lens import token_text
from vlminterp.io import MalformedTableError, read_table, write_table
from vlminterp.workflow.sharding import gather_shards

PROCESSORS = ["HuggingFaceTB--SmolVLM-256M-Instruct", "Qwen--Qwen2-VL-2B", "google--gemma-3-4b-it"]
#: Same vocab.json and merges.txt as Qwen2-VL-2B (checked below); only their added tokens differ.
QWEN_SIBLINGS = ["Qwen--Qwen2.5-VL-7B-Instruct", "Qwen--Qwen3-VL-8B-Instruct"]


def _tokenizer(name: str):
    if name == "llama2":
        from vlminterp.testing.synthetic import llava_1_5_processor

        return llava_1_5_processor(require(LLAMA2_TOKENIZER)).tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require(FIXTURES / "processors" / name))


def _round_trip(table: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """Two shards (gzipped and plain, as the top-k and scores shards), gathered, written, read."""
    half = len(table) // 2
    shards = [tmp_path / "000_topk.csv.gz", tmp_path / "001_scores.csv"]
    write_table(table.iloc[:half], shards[0])
    write_table(table.iloc[half:], shards[1])
    write_table(gather_shards(shards), tmp_path / "gathered.csv")
    return read_table(tmp_path / "gathered.csv")


@pytest.mark.parametrize("name", ["llama2", *PROCESSORS[:2],
                                  pytest.param(PROCESSORS[2], marks=pytest.mark.slow)])  # 262k tokens, 33 MB
def test_every_token_text_of_a_real_vocabulary_round_trips(name, tmp_path):
    tokenizer = _tokenizer(name)
    ids = list(range(len(tokenizer)))
    texts = [text or f"<id {i}>" for i, text in enumerate(tokenizer.batch_decode([[i] for i in ids]))]
    assert texts[:50] == [token_text(tokenizer, i) for i in ids[:50]]  # what N2's top-k table stores
    pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]
    table = pd.DataFrame({"image_id": 1, "token": texts, "token_id": ids, "piece": pieces,
                          "prob": [i / len(ids) for i in ids]})
    back = _round_trip(table, tmp_path)
    assert len(back) == len(table)
    assert back["token_id"].tolist() == ids and back["image_id"].eq(1).all()
    assert back["token"].tolist() == texts  # exact: no stripping, no NaN, no split rows
    assert back["piece"].tolist() == pieces
    if name == "llama2":
        assert texts[17822] == "');\r"  # the token that broke the paper run's N2 table


@pytest.mark.parametrize("name", QWEN_SIBLINGS)
def test_the_other_qwen_vocabularies_add_only_tokens_that_round_trip(name, tmp_path):
    import json

    base, folder = require(FIXTURES / "processors" / "Qwen--Qwen2-VL-2B"), require(FIXTURES / "processors" / name)
    for file in ("vocab.json", "merges.txt"):
        assert (folder / file).read_bytes() == (base / file).read_bytes(), file
    added = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    texts = [entry["content"] for entry in added.values()]
    assert texts
    back = _round_trip(pd.DataFrame({"token_id": [int(i) for i in added], "token": texts}), tmp_path)
    assert back["token"].tolist() == texts


def test_a_table_broken_by_an_unquoted_carriage_return_fails_naming_file_and_line(tmp_path):
    """Today's writer left "\\r" unquoted; such a file must not read as rows padded with NaN."""
    path = tmp_path / "shard_topk.csv.gz"
    path.write_bytes(gzip.compress(b"image_id,token,prob\n7,a,0.5\n7,');\r,0.25\n"))
    with pytest.raises(MalformedTableError, match=r"shard_topk\.csv\.gz: line 3"):
        read_table(path)
    plain = tmp_path / "scores.csv"
    plain.write_text("a,b\n1,2\n3\n")
    with pytest.raises(MalformedTableError, match=r"scores\.csv: line 3: 1 field"):
        read_table(plain)


def test_tables_without_special_text_keep_their_bytes(tmp_path):
    """Minimal quoting stays for ordinary tables: the same bytes as pandas' default writer."""
    table = pd.DataFrame({"a": [1, 2], "token": ["x, y", "z"], "p": [0.5, None]})
    write_table(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == table.to_csv(index=False)
