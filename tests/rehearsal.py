"""The paper run, rehearsed: `configs/llava-1.5-7b.yaml` run by the real Snakemake CLI from the root
of a copy of this checkout (config.yaml beside it, as in a user's clone), on real COCO and LLaVA-1.5's
real tokenizer, with only what this machine cannot have replaced:

- the model: a tiny random-weight checkpoint with LLaVA-1.5-7B's layout (`llava_1_5_config`) and its
  real processor (`llava_1_5_processor`: the Llama 2 SentencePiece model from ../shared/fixtures with
  `<image>` = 32000 and `<pad>` = 32001, the 336 px CLIP crop, 576 image tokens), loaded by path;
- COCO's host: a server on 127.0.0.1 serving ../shared/fixtures/coco-mini in the official layout
  (the annotation archive's own size and MD5 stated, since it is not the official archive);
- the device (cpu: no GPU), image counts and generation lengths (`OVERRIDES`);
- Neo et al.'s released files: coco-mini holds none of their 100 question images and the tiny model
  is not LLaVA-1.5-7B (their mean is 4096-d), so the rehearsal asks the template question on every
  target and keeps its own mean (tests/workflow/test_authors_data_cli.py runs their files by the CLI).

    run = rehearse(tmp_dir)      # -> Rehearsal(root, run_dir, checkpoint, mirror, proc, seconds)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from coco_mirror import Mirror, MirrorServer, build_mirror_from_coco
from shared_fixtures import COCO_MINI, LLAMA2_TOKENIZER

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PAPER_CONFIG = "configs/llava-1.5-7b.yaml"
RUN = "llava-1.5-7b"

# Everything but the model, the host and the device: smaller counts and lengths, the paper's rules.
OVERRIDES = {
    "device": "cpu",
    "neo": {
        "selection": {"max_images": 8,    # a cap: coco-mini has few images that pass the paper's rule
                      "include_question_images": False},
        "mean": {"max_images": 6},
        # the paper config ablates with the authors' released mean (4096-d, LLaVA-1.5-7B's): the tiny
        # model keeps this run's own mean instead
        "ablation": {"description_tokens": 12, "ig_steps": 8, "mean_vector": "run"},
        "authors_data": {"questions": False, "mean_vector": None},
        "prompts": {"vqa_images": "all"},
        # a tiny random model names no object, so the noising filter would keep nothing; the filter
        # has its own tests (tests/unit/test_neo_screening.py)
        "screening": {"enabled": False},
    },
    "kaduri": {"n_images": 4, "description_tokens": 12, "reprompt": {"questions_per_image": 1}},
}
TINY_SIZES = dict(text_layers=4, text_hidden=64, text_intermediate=128, text_heads=4,
                  vision_layers=2, vision_hidden=32, vision_intermediate=64, vision_heads=2)


@dataclass
class Rehearsal:
    root: Path          # the checkout copy the command ran in
    checkpoint: Path    # the tiny LLaVA-1.5 checkpoint directory
    mirror: Mirror      # what the local COCO host served
    proc: subprocess.CompletedProcess
    seconds: float

    @property
    def run_dir(self) -> Path:
        return self.root / "results" / RUN

    @property
    def coco_dir(self) -> Path:
        return self.root / "data" / "coco"


def copy_checkout(destination: Path) -> Path:
    """The files of this checkout a clone would have (tracked and untracked, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def snakemake_in(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `snakemake *args` from the root of a checkout copy, importing that copy's library."""
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join([str(checkout / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([str(SNAKEMAKE), *args], cwd=checkout, capture_output=True, text=True, env=env)


def write_checkpoint(directory: Path) -> Path:
    """A tiny random-weight LLaVA with LLaVA-1.5-7B's layout and real processor, saved in bf16."""
    import torch

    from vlminterp.models.synthetic import llava_1_5_config, llava_1_5_processor, save_random_checkpoint

    processor = llava_1_5_processor(LLAMA2_TOKENIZER)
    save_random_checkpoint(llava_1_5_config(**TINY_SIZES), processor, directory, dtype=torch.bfloat16, std=0.1)
    return directory


def overrides(checkpoint: Path, mirror: Mirror, url: str) -> dict:
    """The rehearsal's config overlay, laid over the paper config: `--configfile <paper> <overlay>`
    (one flag, two files; a second --configfile flag would replace the first)."""
    coco = {"annotations_base_url": url, "images_base_url": url,
            "annotations_size": mirror.archive_size, "annotations_md5": mirror.archive_md5}
    # no GPU here: the paper config's 4-bit stages (bitsandbytes, CUDA only) load the model unquantized
    unquantized = {stage: {"quantization": "none"} for stage in ("screen_neo_targets", "ablate_object_tokens")}
    return {**OVERRIDES, "dataset": {"coco": coco},
            "model": {"pretrained": {"id": str(checkpoint)}, "stages": unquantized}}


def rehearse(tmp: Path, *snakemake_args: str) -> Rehearsal:
    """Run the paper config from the root of a checkout copy under `tmp` (see the module docstring)."""
    root = copy_checkout(tmp / "checkout")
    checkpoint = write_checkpoint(tmp / "llava-1.5-tiny")
    mirror = build_mirror_from_coco(tmp / "mirror", COCO_MINI)
    with MirrorServer(mirror.root) as server:
        overlay = tmp / "rehearsal.yaml"
        overlay.write_text(yaml.safe_dump(overrides(checkpoint, mirror, server.url), sort_keys=False))
        env = {**os.environ, "PYTHONHASHSEED": "0",
               "PYTHONPATH": os.pathsep.join([str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
        started = time.perf_counter()
        proc = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--configfile", PAPER_CONFIG, str(overlay),
                               *snakemake_args],
                              cwd=root, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
    return Rehearsal(root=root, checkpoint=checkpoint, mirror=mirror, proc=proc, seconds=seconds)
