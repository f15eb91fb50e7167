"""Neo et al.'s released files (real copies in ../shared/fixtures/llava-interp, served by a local
mirror): verified download, the questions' conversion, the mean vectors, their comparison, and
the selection that always takes the question images."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from coco_mirror import Fault, MirrorServer
from shared_fixtures import COCO_MINI, LLAVA_INTERP, require

from vlminterp.data.authors_data import (AUTHORS_COMMIT, AUTHORS_FILES, DEFAULT_BASE_URL, compare_means,
                                         download_authors_file, load_authors_mean, questions_table)
from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.data.download import CocoDownloadError


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory):
    """The fixture files laid out as the repository has them (data/<file>)."""
    source = require(LLAVA_INTERP)
    root = tmp_path_factory.mktemp("llava_interp_mirror")
    (root / "data").mkdir()
    for name in AUTHORS_FILES:
        shutil.copyfile(source / name, root / "data" / name)
    return root


def test_default_url_is_the_pinned_commit():
    assert DEFAULT_BASE_URL == ("https://raw.githubusercontent.com/clemneo/llava-interp/"
                                "7bd565acac2d397c41823284a4f553af1b5f5d93")
    assert AUTHORS_COMMIT in DEFAULT_BASE_URL


def test_download_verifies_and_survives_a_bad_first_answer(mirror_root, tmp_path):
    with MirrorServer(mirror_root) as server:
        server.inject("/data/clean_questions.json", Fault("garbage"))
        path = download_authors_file("clean_questions.json", tmp_path, base_url=server.url, retries=1)
        assert path.read_bytes() == (mirror_root / "data" / "clean_questions.json").read_bytes()
        assert len(server.requests_for("/data/clean_questions.json")) == 2
        download_authors_file("clean_questions.json", tmp_path, base_url=server.url)  # already there: kept
        assert len(server.requests_for("/data/clean_questions.json")) == 2


def test_a_changed_file_is_refused_naming_the_url(mirror_root, tmp_path):
    tampered = tmp_path / "mirror"
    shutil.copytree(mirror_root, tampered)
    vector = tampered / "data" / "test_acts_full_precision_mean_vector.pt"
    data = bytearray(vector.read_bytes())
    data[-100] ^= 0xFF
    vector.write_bytes(bytes(data))
    with MirrorServer(tampered) as server, pytest.raises(CocoDownloadError, match="SHA-256") as info:
        download_authors_file(vector.name, tmp_path / "out", base_url=server.url, retries=0)
    assert "test_acts_full_precision_mean_vector.pt" in str(info.value)
    assert not (tmp_path / "out" / vector.name).exists()
    with pytest.raises(ValueError, match="unknown file"):
        download_authors_file("other.pt", tmp_path)


def test_questions_table_is_the_first_question_of_their_100_images():
    raw = json.loads(require(LLAVA_INTERP / "clean_questions.json").read_text())
    table = questions_table(LLAVA_INTERP / "clean_questions.json")
    assert len(raw) == 4318 and len(table) == 100 and table["image_id"].is_unique
    assert list(table.columns) == ["image_id", "question"] and table["image_id"].is_monotonic_increasing
    asked = dict(zip(table["image_id"], table["question"]))
    assert asked[10694] == "What is behind the television?"
    assert asked[245453] == "What is the person throwing?"
    assert asked[579056] == "What is the person holding?"
    assert sum(q == "What is the person holding?" for q in asked.values()) > 1
    empty = [int(k) for k, v in raw.items() if not v]
    assert not set(empty) & set(asked)


def test_questions_table_rejects_a_bad_file(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"12": "What?"}))
    with pytest.raises(ValueError, match="q.json.*'12'"):
        questions_table(path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="q.json"):
        questions_table(path)


@pytest.mark.parametrize("name, hidden", [("test_acts_full_precision_mean_vector.pt", 4096),
                                          ("val_acts_full_precision_phi_mean_vector.pt", 3072)])
def test_authors_mean_vectors_load_and_compare(name, hidden):
    path = require(LLAVA_INTERP / name)
    vector = load_authors_mean(path, hidden)
    assert vector.shape == (hidden,) and vector.dtype == torch.float32
    with pytest.raises(ValueError, match="another model"):
        load_authors_mean(path, hidden + 1)
    theirs = vector.numpy().astype(np.float64)
    run = theirs * 1.5 + np.random.default_rng(0).normal(0, 0.2, hidden)
    expected_cosine = run @ theirs / (np.sqrt(run @ run) * np.sqrt(theirs @ theirs))
    report = compare_means(torch.from_numpy(run).float(), vector)
    assert report["hidden_size"] == hidden
    assert report["cosine"] == pytest.approx(expected_cosine, abs=1e-6)
    assert report["norm_ratio"] == pytest.approx(np.linalg.norm(run) / np.linalg.norm(theirs), rel=1e-6)
    assert compare_means(vector, vector)["cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        compare_means(vector[:10], vector)


def test_selection_always_takes_the_question_images():
    dataset = CocoDataset.load(require(COCO_MINI), "train2017")
    rules = dict(target_area_range=(500.0, 5000.0), max_annotations=10)  # relaxed: coco-mini is small
    qualifying = select_targets(dataset, SelectionSpec(**rules, max_images=None))["image_id"].tolist()
    sampled = select_targets(dataset, SelectionSpec(**rules, max_images=3))["image_id"].tolist()
    required = [i for i in qualifying if i not in sampled][:2]
    not_qualifying = next(i for i in dataset.image_ids() if i not in qualifying)
    spec = SelectionSpec(**rules, max_images=3, include_question_images=True)
    chosen = select_targets(dataset, spec, [*required, not_qualifying])["image_id"].tolist()
    assert len(qualifying) > 3 and len(required) == 2
    assert set(required) <= set(chosen) and len(chosen) == 3 and not_qualifying not in chosen
    assert chosen == sorted(chosen)
    # no question images: exactly the selection without the key
    pd.testing.assert_frame_equal(select_targets(dataset, spec),
                                  select_targets(dataset, SelectionSpec(**rules, max_images=3)))
    with pytest.raises(ValueError, match="include_question_images"):
        select_targets(dataset, SelectionSpec(**rules, max_images=3), required)
