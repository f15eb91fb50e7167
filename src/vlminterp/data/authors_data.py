"""Neo et al.'s released data files: their VQA questions and their mean image embeddings.

    from vlminterp.data.authors_data import download_authors_file, questions_table, load_authors_mean
    path = download_authors_file("clean_questions.json", "results/run/neo/authors")   # verified
    questions_table(path)            # DataFrame image_id, question (their 100 images)
    mean = load_authors_mean(download_authors_file("test_acts_full_precision_mean_vector.pt", dest), 4096)
    compare_means(run_mean, mean)    # {"cosine": ..., "norm_ratio": ..., ...}

The files live in ``data/`` of github.com/clemneo/llava-interp; they are fetched at the pinned
commit ``AUTHORS_COMMIT`` (``base_url`` is a config key, so tests serve a local mirror) and checked
against the size and SHA-256 recorded here (``AUTHORS_FILES``).

Questions. ``clean_questions.json`` maps 4318 COCO train2017 image ids (their filtered images) to
lists of questions; 100 lists hold one question (e.g. "What is the person holding?"), the others
are empty. Their VQA and attention-blocking scripts skip images with an empty list and ask the
first question of the others, about the target their selection filter picks (the first category,
in annotation order, with one instance of area in (1000, 2000) px^2 in an image of <= 3
annotations). ``questions_table`` keeps exactly that: one row (image_id, question) per image with
a question; the selection rules choose the target (``SelectionSpec.include_question_images``).

Mean vectors. fp32 tensors of the post-projector image embedding averaged over images: (4096,)
for LLaVA-1.5-7B, (3072,) for LLaVA-Phi-3-mini. Loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vlminterp.data.download import download_file

AUTHORS_REPOSITORY = "clemneo/llava-interp"
AUTHORS_COMMIT = "7bd565acac2d397c41823284a4f553af1b5f5d93"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{AUTHORS_REPOSITORY}/{AUTHORS_COMMIT}"


@dataclass(frozen=True)
class AuthorsFile:
    """One released file: its path in the repository, byte size and SHA-256 at AUTHORS_COMMIT."""

    path: str
    size: int
    sha256: str


AUTHORS_FILES = {
    "clean_questions.json": AuthorsFile(
        "data/clean_questions.json", 79_722,
        "9345ce066f315d3ef667383dd3aba62220e3cfdcf438794fbe6eff8ee08782b8"),
    "test_acts_full_precision_mean_vector.pt": AuthorsFile(   # LLaVA-1.5-7B, (4096,)
        "data/test_acts_full_precision_mean_vector.pt", 17_584,
        "396ebddf554f4b627d25a598b51d1d8b4dc793627a78cd7e6627ebef4a4cda9d"),
    "val_acts_full_precision_phi_mean_vector.pt": AuthorsFile(   # LLaVA-Phi-3-mini, (3072,)
        "data/val_acts_full_precision_phi_mean_vector.pt", 13_488,
        "fbf8b102d04ed2d4f5262c350244f8fe6ae1927338e0dc5c2dd9e9f9ea1866b9"),
}


def authors_file(name: str) -> AuthorsFile:
    """The record of a released file, or a ValueError listing the known ones."""
    if name not in AUTHORS_FILES:
        raise ValueError(f"unknown file {name!r} of {AUTHORS_REPOSITORY}; known: {sorted(AUTHORS_FILES)}")
    return AUTHORS_FILES[name]


def download_authors_file(name: str, dest_dir: str | os.PathLike, *, base_url: str = DEFAULT_BASE_URL,
                          retries: int = 5, session=None) -> Path:
    """Fetch ``<base_url>/<path>`` to ``dest_dir/<name>`` and check its size and SHA-256 (kept when
    already there and right). Raises ``CocoDownloadError`` naming the URL when that fails."""
    record = authors_file(name)
    return download_file(f"{base_url.rstrip('/')}/{record.path}", Path(dest_dir) / name, size=record.size,
                         sha256=record.sha256, retries=retries, session=session)


def questions_table(path: str | os.PathLike) -> pd.DataFrame:
    """(image_id, question) of every image with a question in ``clean_questions.json``: its first
    question, as the authors' scripts ask it. Sorted by image_id."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping image ids to lists of questions")
    rows = []
    for key, questions in data.items():
        if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
            raise ValueError(f"{path}: image {key!r} maps to {questions!r}, not a list of questions")
        if not key.isdigit():
            raise ValueError(f"{path}: key {key!r} is not a COCO image id")
        if questions:
            rows.append({"image_id": int(key), "question": questions[0]})
    table = pd.DataFrame(rows, columns=["image_id", "question"]).astype({"image_id": "int64"})
    return table.sort_values("image_id", ignore_index=True)


def load_authors_mean(path: str | os.PathLike, hidden_size: int | None = None) -> torch.Tensor:
    """A released mean vector as a (hidden,) float32 tensor (``weights_only=True``); ValueError
    naming the file when it is not one 1-D tensor of ``hidden_size`` finite values."""
    import torch

    vector = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        raise ValueError(f"{path}: expected one 1-D tensor, got {type(vector).__name__} "
                         f"{getattr(vector, 'shape', '')}")
    if hidden_size is not None and vector.numel() != hidden_size:
        raise ValueError(f"{path}: the authors' mean has {vector.numel()} values but this model's image "
                         f"embeddings have {hidden_size}: the file is for another model")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{path}: holds non-finite values")
    return vector.float()


def compare_means(run_mean: torch.Tensor, authors_mean: torch.Tensor) -> dict[str, float | int]:
    """Cosine similarity and norm ratio (this run's / the authors') of two mean vectors (float64)."""
    run, theirs = run_mean.double().reshape(-1), authors_mean.double().reshape(-1)
    if run.shape != theirs.shape:
        raise ValueError(f"mean vectors differ in size: this run's {run.numel()}, the authors' {theirs.numel()}")
    run_norm, their_norm = float(run.norm()), float(theirs.norm())
    return {"hidden_size": int(run.numel()),
            "cosine": float(run @ theirs) / (run_norm * their_norm),
            "norm_ratio": run_norm / their_norm,
            "run_norm": run_norm, "authors_norm": their_norm,
            "max_abs_difference": float((run - theirs).abs().max())}
