"""GPU smoke run of the real code path: LLaVA-1.5-7B's architecture with random weights (bf16) through
every stage of the workflow (N1-N3, K1-K4) on a handful of shapes-world images, loaded exactly as the
papers' run loads llava-hf/llava-1.5-7b-hf; records per rule the wall time, the images processed,
the time per image and the peak GPU memory.

    python -m benchmarks.gpu_smoke --size 7b --device cuda      # make smoke-gpu (~14 GB disk, one GPU)
    python -m benchmarks.gpu_smoke --size tiny --device cpu     # the same path at tiny size (~2 CPU-min)
    python -m benchmarks.gpu_smoke --rules localize_objects     # one stage again (and what it needs)

Steps: (1) write a random-weight checkpoint directory (`save_pretrained` model + processor) under
<workdir>/checkpoint: `--size 7b` = `llava_1_5_7b_config()` (32064-token vocabulary, 336 px CLIP
processor, 576 image tokens) in bf16, `--size tiny` = a tiny synthetic LLaVA in fp32. Its tokenizer
is the organism's word-level tokenizer over the shapes world's prompts and answers, laid out as the
checkpoint's vocabulary (LLaVA-1.5: <unk> 0, <s> 1, </s> 2, <image> 32000, <pad> 32001, unused
placeholders elsewhere). The weights are filled on the meta device -> `to_empty` -> one seeded
`normal_` per parameter, on the GPU for --device cuda (`save_random_checkpoint`), in a child process
so this process never holds a CUDA context while the rules run. A checkpoint written before with the
same settings is reused (--fresh rewrites it). (2) Write a run config: model.kind pretrained with
model.pretrained.id = that directory (as configs/llava-1.5-7b.yaml names the hub id), the shapes
world at the model's input size, --images images in every stage, the paper config's generation
lengths and batch sizes for 7b (short ones for tiny), device cuda + bf16 or cpu + fp32. (3) Run
`snakemake --cores all --resources gpu=1` on it in a fresh <workdir>/results (model jobs declare
gpu=1, so they run one at a time and each rule's time and memory are its own); with --rules, on
the tables of those experiment rules only (Snakemake runs them and the jobs they need). (4) Read every
rule's log: `finished in X s` and `peak GPU memory: N bytes` (vlminterp.workflow.runtime.rule_context),
`loaded model ... in X s` (vlminterp.models.loading); count the images each model rule was given;
write benchmarks/results/gpu_smoke_<device>_<size>[_<rules>].json and print a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

from benchmarks.common import RESULTS_DIR, environment, mark_start, save
from vlminterp.workflow.registry import STAGES, by_rule

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "llava-1.5-7b.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SIZES = ("7b", "tiny")
# LLaVA-1.5's (Llama 2) token layout: llava-hf/llava-1.5-7b-hf adds <image> and <pad> after the
# 32000 Llama tokens and pads the embedding to 32064 rows.
LLAVA_1_5_SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001}
# The tiny model: a 6 x 6 grid (48 px, 8 px patches) on the tiny Llama of testing/synthetic.py.
TINY_SIZES = {"image_size": 48, "patch_size": 8}
# Rules that load the model and process images (the registry's sharded stages); the table each one
# is given its images from (shards are contiguous blocks of it, `vlminterp.workflow.sharding`).
# compute_mean_embedding: the file's `n_images` metadata.
EXPERIMENT_RULES = {"compute_mean_embedding": "neo/mean_images.csv",
                    **{stage.rule: stage.images for stage in STAGES if stage.sharded}}
FINISHED = re.compile(r"finished in ([0-9.]+) s")
PEAK = re.compile(r"peak GPU memory: (\d+) bytes allocated")
LOADED = re.compile(r"loaded model .* in ([0-9.]+) s")


# ---- (1) the checkpoint ---------------------------------------------------------------------------


def shapes_world(size: str, images: int) -> dict:
    """dataset.shapes of the run: images at the model's input size, objects on its patch grid."""
    if size == "7b":  # 336 px, 14 px cells = LLaVA-1.5's 24 x 24 grid; objects 3-5 cells (42-70 px)
        geometry = {"image_size": 336, "cell_size": 14, "min_object_cells": 3, "max_object_cells": 5}
    else:
        geometry = {"image_size": TINY_SIZES["image_size"], "cell_size": TINY_SIZES["patch_size"]}
    # a few spare images: every stage's selection finds `images` of its split
    return {**geometry, "n_train": images + 4, "n_val": images + 4}


def prompt_texts(config: dict) -> list[str]:
    """Every text the run's stages tokenize (schema defaults applied), placeholders dropped."""
    from snakemake.utils import validate

    from vlminterp.data.questions import DEFAULT_TEMPLATE

    full = copy.deepcopy(config)
    validate(full, str(SCHEMA), set_default=True)
    prompts, kaduri = full["neo"]["prompts"], full["kaduri"]
    texts = [prompts["describe"], prompts["polling"], prompts["vqa_question"], prompts["vqa_answer_prefix"],
             prompts["system_prompt"], kaduri["prompt"], kaduri["system_prompt"], kaduri["reprompt"]["continuation"],
             DEFAULT_TEMPLATE, "USER: ASSISTANT:"]
    return [re.sub(r"\{\w+\}", " ", text) for text in texts if text]


def tokenizer_words(config: dict) -> list[str]:
    """The word-level vocabulary: the organism's (tasks, shapes, colours, LLaVA's system prompt) plus
    every word of the run's prompts."""
    from vlminterp.data.shapes import ShapesWorldSpec
    from vlminterp.organism.tasks import vocabulary_words
    from vlminterp.organism.tokenizer import split_words

    world = ShapesWorldSpec()
    shapes = config["dataset"]["shapes"].get("shapes", world.shapes)
    colors = config["dataset"]["shapes"].get("colors", world.colors)
    words = vocabulary_words(shapes, colors)
    for text in prompt_texts(config):
        words += [w for w in split_words(text) if w not in words]
    return words


def checkpoint_model(size: str, words: list[str]):
    """(model config, processor) of the checkpoint: the tokenizer's layout matches the config's
    vocabulary (7b: LLaVA-1.5's published layout, checked; tiny: the config is fitted to it)."""
    from vlminterp.organism.tokenizer import IMAGE, build_processor
    from vlminterp.testing.synthetic import llava_1_5_7b_config, synthetic_config, with_sizes

    if size == "7b":
        config = llava_1_5_7b_config()
        processor = build_processor(words, image_size=336, patch_size=14, special_ids=LLAVA_1_5_SPECIAL_IDS,
                                    vocab_size=config.text_config.vocab_size)
    elif size == "tiny":
        processor = build_processor(words, **TINY_SIZES)
        config = synthetic_config(with_sizes("tiny-llama", **TINY_SIZES), tokenizer=processor.tokenizer)
    else:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = config.text_config.max_position_embeddings  # the organism's 512 < 7B prompts
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    text = config.text_config
    found = {key: getattr(text, key) for key in ids} | {"image_token_id": config.image_token_id}
    if found != ids | {"image_token_id": image_id}:
        raise AssertionError(f"tokenizer layout {ids} does not match the {size} config's {found}")
    return config, processor


def _write_checkpoint(size: str, words: list[str], directory: str, device: str, seed: int) -> dict:
    import torch

    from vlminterp.testing.synthetic import save_random_checkpoint

    config, processor = checkpoint_model(size, words)
    dtype = torch.bfloat16 if size == "7b" else torch.float32
    return save_random_checkpoint(config, processor, directory, dtype=dtype, device=device, seed=seed)


def write_checkpoint(size: str, words: list[str], directory: Path, device: str, seed: int, fresh: bool) -> dict:
    """The checkpoint directory, reused when written before with the same settings; written in a
    child process (a CUDA context here would hold GPU memory while the rules run)."""
    stamp = {"size": size, "seed": seed, "words": words}
    stamp_path = directory / "smoke_checkpoint.json"
    if not fresh and stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        return {**json.loads(stamp_path.read_text())["written"], "reused": True}
    shutil.rmtree(directory, ignore_errors=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        written = pool.submit(_write_checkpoint, size, words, str(directory), device, seed).result()
    written["bytes"] = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    stamp_path.write_text(json.dumps({"stamp": stamp, "written": written}, indent=2))
    return {**written, "reused": False}


# ---- (2) the run config ---------------------------------------------------------------------------


def smoke_config(size: str, device: str, model_dir: str | Path, images: int = 4, seed: int = 0) -> dict:
    """The Snakemake config of the smoke run (see the module docstring)."""
    paper = yaml.safe_load(PAPER_CONFIG.read_text())
    # the smoke run's own precision: no 4-bit stages (bitsandbytes is an optional extra)
    model = {**paper["model"], "pretrained": {"id": str(model_dir), "revision": None},
             "dtype": "bf16" if device == "cuda" else "fp32", "quantization": "none", "stages": {}}
    neo = {
        "selection": {"split": "val", "target_area_range": [0, 1000000], "exclude_crowd_targets": False,
                      "max_images": images},
        "mean": {"split": "train", "max_images": images},
        "prompts": {"describe": paper["neo"]["prompts"]["describe"]},  # the shapes world's VQA question
        # the paper ablates with the authors' released mean (LLaVA-1.5-7B's): the smoke model keeps its own
        "ablation": {**paper["neo"]["ablation"], "mean_vector": "run"},
        "logit_lens": {"html_images": 1},
        "bootstrap_resamples": 100,
    }
    kaduri = {**copy.deepcopy(paper["kaduri"]), "n_images": images}
    if size == "tiny":  # CPU test: short generations, few integrated-gradient steps
        neo["ablation"].update(description_tokens=8, ig_steps=2, ig_batch_size=2)
        kaduri.update(description_tokens=8, batch_size=16)
        kaduri["knockout"] = {"window_step": 2, "start_layer_step": 2}
        kaduri["localization"] = {"band_width": 2}
    return {
        "run": f"gpu-smoke-{size}",
        "seed": seed,
        "device": device,
        "dataset": {"kind": "shapes", "split": "val", "shapes": shapes_world(size, images)},
        "model": model,
        # gpu: 1 with --resources gpu=1 runs the model jobs one at a time (their own time and memory)
        "resources": {"model_jobs": {**paper["resources"]["model_jobs"], "gpu": 1,
                                     "threads": 2 if device == "cuda" else 1}},
        "neo": neo,
        "kaduri": kaduri,
    }


def model_summary(model_dir: Path) -> dict:
    """Sizes of the checkpoint as written (its config.json; parameters counted on the meta device)."""
    from transformers import AutoConfig

    from vlminterp.testing.synthetic import build_on_meta

    config = AutoConfig.from_pretrained(model_dir)
    text, vision = config.text_config, config.vision_config
    side = vision.image_size // vision.patch_size
    return {"hidden_size": text.hidden_size, "layers": text.num_hidden_layers, "heads": text.num_attention_heads,
            "kv_heads": text.num_key_value_heads, "intermediate_size": text.intermediate_size,
            "vocab_size": text.vocab_size, "vision_layers": vision.num_hidden_layers,
            "vision_hidden_size": vision.hidden_size, "image_size": vision.image_size,
            "image_tokens": side * side, "image_seq_length": config.image_seq_length,
            "parameters": sum(p.numel() for p in build_on_meta(config).parameters())}


# ---- (4) reading the logs ---------------------------------------------------------------------------


def parse_rule_log(text: str) -> dict:
    """What one rule log says: wall time, model loading time and peak GPU memory (None when absent)."""
    finished, peak = FINISHED.findall(text), PEAK.findall(text)
    return {
        "wall_s": float(finished[-1]) if finished else None,
        "load_s": sum(float(s) for s in LOADED.findall(text)) or None,
        "peak_gpu_bytes": int(peak[-1]) if peak else None,
    }


def images_given(run_dir: Path, rule: str, shard: str | None, images_per_shard: int) -> int | None:
    """Images an experiment rule (one shard of it) was given."""
    from vlminterp.io import read_table
    from vlminterp.workflow.sharding import shard_rows

    if rule == "compute_mean_embedding":
        from safetensors import safe_open

        with safe_open(str(run_dir / "neo" / "mean_embedding.safetensors"), "pt") as f:
            return int(f.metadata()["n_images"])
    table = read_table(run_dir / EXPERIMENT_RULES[rule])
    rows = shard_rows(table, shard, images_per_shard) if shard is not None else table
    return int(rows["image_id"].nunique())


def collect(run_dir: Path, images_per_shard: int = 1000) -> dict[str, dict]:
    """Per rule (shards summed; peak memory: the largest): jobs, wall_s (time inside the script's
    rule_context, i.e. after its imports), load_s (model loading), images (given to an experiment
    rule), s_per_image, s_per_image_excl_load, peak_gpu_bytes and peak_gpu_gib (rules that used CUDA)."""
    rules: dict[str, dict] = {}
    for log in sorted((run_dir / "logs").rglob("*.log")):
        relative = log.relative_to(run_dir / "logs")
        rule, shard = (relative.parts[0], log.stem) if len(relative.parts) > 1 else (log.stem, None)
        parsed = parse_rule_log(log.read_text(errors="replace"))
        entry = rules.setdefault(rule, {"jobs": 0, "wall_s": None, "load_s": None, "images": None,
                                        "peak_gpu_bytes": None})
        entry["jobs"] += 1
        for key in ("wall_s", "load_s"):
            if parsed[key] is not None:
                entry[key] = (entry[key] or 0.0) + parsed[key]
        if parsed["peak_gpu_bytes"] is not None:
            entry["peak_gpu_bytes"] = max(entry["peak_gpu_bytes"] or 0, parsed["peak_gpu_bytes"])
        if rule in EXPERIMENT_RULES and parsed["wall_s"] is not None:
            entry["images"] = (entry["images"] or 0) + images_given(run_dir, rule, shard, images_per_shard)
    for entry in rules.values():
        n, wall, load = entry["images"], entry["wall_s"], entry["load_s"]
        entry["s_per_image"] = wall / n if n and wall is not None else None
        entry["s_per_image_excl_load"] = (wall - (load or 0.0)) / n if n and wall is not None else None
        peak = entry["peak_gpu_bytes"]
        entry["peak_gpu_gib"] = round(peak / 2**30, 3) if peak is not None else None
    return rules


def markdown_table(result: dict) -> str:
    """The per-rule table (experiment rules first, in stage order; then the others that loaded a model
    or used the GPU)."""
    rules = result["rules"]
    order = [r for r in EXPERIMENT_RULES if r in rules]
    order += sorted(r for r, e in rules.items() if r not in order and (e["load_s"] or e["peak_gpu_bytes"]))

    def fmt(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    parameters = result["model"]["parameters"]
    parameters = f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.2f} M"
    lines = [f"GPU smoke run, {result['size']} on {result['device']} ({result['dtype']}), "
             f"{result['images']} images per stage, {parameters} parameters",
             "", "| rule | jobs | wall s | load s | images | s / image | s / image excl. load | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for rule in order:
        e = rules[rule]
        lines.append(f"| {rule} | {e['jobs']} | {fmt(e['wall_s'])} | {fmt(e['load_s'])} | {e['images'] or '-'} | "
                     f"{fmt(e['s_per_image'], 2)} | {fmt(e['s_per_image_excl_load'], 2)} | {fmt(e['peak_gpu_gib'], 2)} |")
    ran = "whole DAG" if result["requested_rules"] is None else " + ".join(result["requested_rules"])
    lines.append(f"\n{ran}: {result['snakemake']['seconds']:.0f} s ({result['snakemake']['jobs']} jobs); "
                 f"checkpoint: {result['checkpoint']['seconds']:.0f} s"
                 f"{' (reused)' if result['checkpoint']['reused'] else ''}")
    return "\n".join(lines)


# ---- (3) the run ------------------------------------------------------------------------------------


def _shown(path) -> str:
    """A path as recorded in the JSON: relative to the repository when inside it."""
    text = str(path)
    return text[len(str(ROOT)) + 1:] if text.startswith(str(ROOT) + os.sep) else text


def rule_targets(run: str, rules: list[str] | None) -> list[str]:
    """Snakemake's targets for experiment rules `rules` (paths under the workdir): the tables their
    stages write (gathered); none for all rules (the default target, the whole DAG)."""
    return [f"results/{run}/{table}" for rule in rules or () for table in by_rule(rule).tables]


def run_snakemake(workdir: Path, configfile: Path,
                  targets: list[str] = ()) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.exists() else "snakemake", *targets, "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(configfile), "--cores", "all",
           "--resources", "gpu=1"]  # targets first: --configfile and --resources take several values
    python_path = str(ROOT / "src")  # the rule scripts import this checkout's library
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env["PYTHONPATH"] = python_path + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return proc, time.perf_counter() - started, cmd


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="7b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--images", type=int, default=4, help="images in every stage (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default results/gpu-smoke/<device>-<size>, git-ignored)")
    parser.add_argument("--fresh", action="store_true", help="rewrite the checkpoint even if one matches")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/gpu_smoke_<device>_<size>[_<rules>].json)")
    parser.add_argument("--rules", nargs="+", choices=list(EXPERIMENT_RULES), metavar="RULE", default=None,
                        help="smoke-test only these experiment rules and the jobs they need, e.g. to retry "
                             "one stage (default: the whole DAG). One of: " + ", ".join(EXPERIMENT_RULES))
    args = parser.parse_args(argv)
    requested = None if args.rules is None else list(dict.fromkeys(args.rules))
    mark_start()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():  # no CUDA context is created here
        raise SystemExit("--device cuda but no CUDA GPU is visible (torch.cuda.is_available() is False)")

    workdir = (args.workdir or ROOT / "results" / "gpu-smoke" / f"{args.device}-{args.size}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "checkpoint"
    config = smoke_config(args.size, args.device, model_dir, images=args.images, seed=args.seed)
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))

    print(f"writing the {args.size} random-weight checkpoint to {model_dir} ...", flush=True)
    checkpoint = write_checkpoint(args.size, tokenizer_words(config), model_dir, args.device, args.seed, args.fresh)
    for stale in ("results", ".snakemake"):  # every rule runs, and its log is this run's
        shutil.rmtree(workdir / stale, ignore_errors=True)
    print(f"running snakemake in {workdir} ...", flush=True)
    proc, seconds, cmd = run_snakemake(workdir, configfile, rule_targets(config["run"], requested))
    run_dir = workdir / "results" / config["run"]
    images_per_shard = config.get("sharding", {}).get("images_per_shard", 1000)
    rules = collect(run_dir, images_per_shard) if (run_dir / "logs").exists() else {}
    result = {
        "name": "gpu_smoke",
        "size": args.size,
        "device": args.device,
        "dtype": config["model"]["dtype"],
        "images": args.images,
        "requested_rules": requested,
        "model": model_summary(model_dir),
        "checkpoint": {"path": _shown(model_dir), **checkpoint},
        "snakemake": {"command": " ".join(_shown(part) for part in cmd), "returncode": proc.returncode,
                      "seconds": seconds,
                      "jobs": sum(e["jobs"] for e in rules.values())},
        "config": {**config, "model": {**config["model"], "pretrained": {
            **config["model"]["pretrained"], "id": _shown(config["model"]["pretrained"]["id"])}}},
        "rules": rules,
        "experiment_rules": [r for r in EXPERIMENT_RULES if r in rules],
        "max_peak_gpu_gib": max((e["peak_gpu_gib"] for e in rules.values() if e["peak_gpu_gib"] is not None),
                                default=None),
        "environment": environment(),
    }
    suffix = "".join(f"_{rule}" for rule in requested or ())
    save(result, args.out or RESULTS_DIR / f"gpu_smoke_{args.device}_{args.size}{suffix}.json")
    print(markdown_table(result))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"snakemake failed ({proc.returncode}); partial results are in the JSON and {run_dir}/logs")
    return result


if __name__ == "__main__":
    main()
