"""A paper run, rehearsed: a paper config (`configs/llava-1.5-7b.yaml`, `configs/smolvlm-256m.yaml`) run by
the real Snakemake CLI from the root of a copy of this checkout (config.yaml beside it, as in a user's
clone), on real COCO and the family's real tokenizer and processor, with only what this machine cannot
have replaced:

- the model: a tiny random-weight checkpoint with the family's layout and real processor, loaded by
  path (`Family.write_checkpoint`: LLaVA-1.5-7B's layout with the Llama 2 SentencePiece model, `<image>`
  = 32000 and `<pad>` = 32001, the 336 px CLIP crop, 576 image tokens; SmolVLM-256M's real config.json
  shrunk, its real processor with the resize target capped, see `write_smolvlm_checkpoint`);
- COCO's host: a server on 127.0.0.1 serving ../shared/fixtures/coco-mini in the official layout
  (the annotation archive's own size and MD5 stated, since it is not the official archive);
- the device (cpu: no GPU; one thread per model job), image counts and generation lengths
  (`OVERRIDES`, then the family's own `Family.overrides` laid over them);
- Neo et al.'s released files: coco-mini holds none of their 100 question images and the tiny model
  is not LLaVA-1.5-7B (their mean is 4096-d), so the rehearsal asks the template question on every
  target and keeps its own mean (tests/workflow/test_authors_data_cli.py runs their files by the CLI).

    run = rehearse(tmp_dir, LLAVA_1_5)   # -> Rehearsal(family, root, checkpoint, mirror, proc, seconds, cpu_seconds)
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from coco_mirror import Mirror, MirrorServer, build_mirror_from_coco
from shared_fixtures import COCO_MINI, LLAMA2_TOKENIZER, SMOLVLM_PROCESSOR

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# Everything but the model, the host and the device: smaller counts and lengths, the paper's rules.
OVERRIDES = {
    "device": "cpu",
    # one torch thread per model job, so `--cores 2` runs two at once: on the 2-core CI machine
    # the LLaVA-1.5 run took 152 -> 90 s and SmolVLM's 115 -> 54 s, idle, back to back
    "resources": {"model_jobs": {"threads": 1}},
    "neo": {
        "selection": {"max_images": 4,    # a cap: coco-mini has few images that pass the paper's rule
                      "include_question_images": False},
        "mean": {"max_images": 4},
        # the paper config ablates with the authors' released mean (4096-d, LLaVA-1.5-7B's): the tiny
        # model keeps this run's own mean instead
        "ablation": {"description_tokens": 12, "ig_steps": 4, "mean_vector": "run"},
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
# SmolVLM's resize target in the rehearsal's checkpoint (2048 in the real one): a 640 x 480 COCO image
# becomes 2 x 2 tiles of 512 px plus the global image (320 image tokens) instead of 4 x 3 plus one (832).
# The smallest target that still cuts tiles: at 512 a COCO image is the global image alone.
SMOLVLM_LONGEST_EDGE = 1024


def write_llava_1_5_checkpoint(directory: Path) -> Path:
    """A tiny random-weight LLaVA with LLaVA-1.5-7B's layout and real processor, saved in bf16."""
    import torch

    from vlminterp.testing.synthetic import llava_1_5_config, llava_1_5_processor, save_random_checkpoint

    processor = llava_1_5_processor(LLAMA2_TOKENIZER)
    save_random_checkpoint(llava_1_5_config(**TINY_SIZES), processor, directory, dtype=torch.bfloat16, std=0.1)
    return directory


def write_smolvlm_checkpoint(directory: Path) -> Path:
    """A tiny random-weight Idefics3 from SmolVLM-256M-Instruct's real config.json (shrunk) and its real
    processor, whose saved resize target is SMOLVLM_LONGEST_EDGE; saved in bf16."""
    import torch

    from vlminterp.testing.tiny_idefics3 import build_tiny_idefics3

    model, processor = build_tiny_idefics3(SMOLVLM_PROCESSOR, max_longest_edge=SMOLVLM_LONGEST_EDGE)
    model.to(torch.bfloat16).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@dataclass(frozen=True)
class Family:
    """What one paper config's rehearsal needs of its own."""
    config: str                               # the paper config, relative to the checkout
    run: str                                  # its run name: results/<run>
    adapter: str                              # the adapter class its model rules must use
    write_checkpoint: Callable[[Path], Path]  # writes the tiny checkpoint into a directory
    fixtures: tuple[Path, ...]                # what ../shared must hold for it
    overrides: dict = field(default_factory=dict)  # laid over OVERRIDES (deep)


LLAVA_1_5 = Family("configs/llava-1.5-7b.yaml", "llava-1.5-7b", "LlavaAdapter", write_llava_1_5_checkpoint,
                   (COCO_MINI, LLAMA2_TOKENIZER))
# Idefics3 at 320 image tokens and a 49k vocabulary: fewer targets and images, shorter generations.
SMOLVLM = Family("configs/smolvlm-256m.yaml", "smolvlm-256m", "Idefics3Adapter", write_smolvlm_checkpoint,
                 (COCO_MINI, SMOLVLM_PROCESSOR),
                 {"neo": {"selection": {"max_images": 2}, "mean": {"max_images": 2},
                          "ablation": {"description_tokens": 4, "ig_steps": 2}},
                  "kaduri": {"n_images": 2, "description_tokens": 4}})
FAMILIES = {"llava-1.5": LLAVA_1_5, "smolvlm": SMOLVLM}


@dataclass
class Rehearsal:
    family: Family
    root: Path          # the checkout copy the command ran in
    checkpoint: Path    # the tiny checkpoint directory
    mirror: Mirror      # what the local COCO host served
    proc: subprocess.CompletedProcess
    seconds: float      # wall time of the Snakemake command
    cpu_seconds: float  # CPU time (user + system) of it and every process it started

    @property
    def overlay(self) -> Path:
        return self.root.parent / "rehearsal.yaml"

    @property
    def run_dir(self) -> Path:
        return self.root / "results" / self.family.run

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


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def overrides(family: Family, checkpoint: Path, mirror: Mirror, url: str) -> dict:
    """The rehearsal's config overlay, laid over the paper config: `--configfile <paper> <overlay>`
    (one flag, two files; a second --configfile flag would replace the first)."""
    coco = {"annotations_base_url": url, "images_base_url": url,
            "annotations_size": mirror.archive_size, "annotations_md5": mirror.archive_md5}
    # no GPU here: the paper config's 4-bit stages (bitsandbytes, CUDA only) load the model unquantized
    unquantized = {stage: {"quantization": "none"} for stage in ("screen_neo_targets", "ablate_object_tokens")}
    return {**_deep_merge(OVERRIDES, family.overrides), "dataset": {"coco": coco},
            "model": {"pretrained": {"id": str(checkpoint)}, "stages": unquantized}}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rehearse(tmp: Path, family: Family, *snakemake_args: str) -> Rehearsal:
    """Run `family`'s paper config from the root of a checkout copy under `tmp` (module docstring)."""
    root = copy_checkout(tmp / "checkout")
    checkpoint = family.write_checkpoint(tmp / f"{family.run}-tiny")
    mirror = build_mirror_from_coco(tmp / "mirror", COCO_MINI)
    with MirrorServer(mirror.root) as server:
        overlay = tmp / "rehearsal.yaml"
        overlay.write_text(yaml.safe_dump(overrides(family, checkpoint, mirror, server.url), sort_keys=False))
        started, cpu_before = time.perf_counter(), _children_cpu_seconds()
        proc = snakemake_in(root, "--cores", "2", "--configfile", family.config, str(overlay), *snakemake_args)
        seconds, cpu_seconds = time.perf_counter() - started, _children_cpu_seconds() - cpu_before
    return Rehearsal(family=family, root=root, checkpoint=checkpoint, mirror=mirror, proc=proc,
                     seconds=seconds, cpu_seconds=cpu_seconds)
