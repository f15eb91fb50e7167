"""The mean post-projector image embedding: N1's ablation vector and its integrated-gradient baseline.

    spec = MeanSpec(split="train2017", max_images=1000, batch_size=16)     # config section neo.mean
    image_ids = mean_image_ids(dataset, spec.max_images, seed=0, exclude=selection["image_id"])
    mean, count = compute_mean_embedding(session, image_ids, batch_size=16)   # a streaming mean
    save_mean_embedding(mean, count, image_ids, "mean.safetensors"); load_mean_embedding(path)

The images are shown the way the session shows them (`session.prompt.geometry`, neo.cells.geometry).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from vlminterp.data.coco import CocoDataset
from vlminterp.batching import AdaptiveBatch
from vlminterp.experiments.shared.cells import check_geometry
from vlminterp.io import atomic_path
from vlminterp.batching import no_grad
from vlminterp.experiments.neo.specs import MeanSpec  # noqa: F401  (the settings live in a light module)

if TYPE_CHECKING:
    import torch


def mean_image_ids(dataset: CocoDataset, max_images: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """At most `max_images` image ids of `dataset` (seeded sample, sorted), none of `exclude`."""
    excluded = {int(i) for i in exclude}
    ids = [i for i in dataset.image_ids() if i not in excluded]
    if len(ids) > max_images:
        ids = sorted(int(i) for i in np.random.default_rng(seed).choice(ids, size=max_images, replace=False))
    if not ids:
        raise ValueError(f"no images left for the mean embedding in {dataset.annotation_file}")
    return ids


@no_grad
def compute_mean_embedding(session, image_ids: Sequence[int],
                           batch_size: int | AdaptiveBatch = 16) -> tuple[torch.Tensor, int]:
    """Streaming mean of the post-projector image embedding over every position of `image_ids`
    (images of `session.dataset`, shown with the session's geometry).

    Returns (mean (d,) float32, number of vectors averaged). Memory is one batch of images; pass an
    `AdaptiveBatch` to read back the batch size used after CUDA out-of-memory halved it.
    """
    import torch

    from vlminterp.interventions import StreamingMean

    check_geometry(session.adapter, session.prompt.geometry, "compute_mean_embedding")
    batches = batch_size if isinstance(batch_size, AdaptiveBatch) else AdaptiveBatch(batch_size, "mean embedding")
    running = StreamingMean()

    def features(chunk: list[int]) -> torch.Tensor:
        return session.image_features([session.dataset.load_image(int(i)) for i in chunk])

    for chunk_features in batches.iterate(image_ids, features):
        running.update(chunk_features)
    return running.mean(torch.float32), running.count


def save_mean_embedding(mean: torch.Tensor, count: int, image_ids: Sequence[int], path: str | os.PathLike,
                        batching: dict[str, int] | None = None) -> None:
    """Write the mean vector as safetensors (tensor "mean"; metadata: count, number of images and
    `batching`, the batch_size / oom_retries of `AdaptiveBatch.columns`)."""
    from safetensors.torch import save_file

    metadata = {"count": str(count), "n_images": str(len(image_ids)),
                "first_image_ids": ",".join(str(i) for i in list(image_ids)[:20])}
    metadata.update({key: str(value) for key, value in (batching or {}).items()})
    with atomic_path(path) as tmp:
        save_file({"mean": mean.detach().cpu().float().contiguous()}, str(tmp), metadata=metadata)
        sort_safetensors_header(tmp)


def sort_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys: safetensors writes its metadata
    in hash-map order, which changes from process to process (and so would the file's bytes)."""
    import json
    import struct

    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)              # data stays 8-byte aligned, as safetensors writes it
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def load_mean_embedding(path: str | os.PathLike) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["mean"]
