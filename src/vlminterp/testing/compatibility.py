"""The family x operation compatibility table (docs/COMPATIBILITY.md), measured, never written by hand.

    python -m vlminterp.testing.compatibility                    # writes docs/COMPATIBILITY.md
    python -m vlminterp.testing.compatibility --families llava --out -   # one family, to stdout
    rows = measure_family("gemma3", fixtures)                   # {operation: Cell}

Each family runs as a tiny random-weight model (LLaVA, InternVL, Qwen2-VL: `testing.synthetic`;
Gemma 3, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, Idefics3: the real config shrunk, the real processor,
a COCO image from the shared fixtures, shrunk to SHRUNK_IMAGE_SIDE px for the Qwen families and
LLaVA-OneVision) and each
operation (`adapters.OPERATIONS`) is compared with an independent computation:

    forward         engine logits, no edit            vs the HF model's own logits (adapter.model_inputs)
    ablation        engine, image-token ablations     vs reference_logits (one full forward each)
    knockout        engine, knockouts (text->image, image->image)   vs reference_logits
    generation      engine.generate with knockouts    vs reference_generate (model.generate), token ids
    kept_caches     kept_caches + continue_cache      vs reference_generate of prompt + question, token ids
    capture         Capture of resid_post / attn      vs the HF model's output_hidden_states
    prefix_sharing  engine with the shared prefix     vs share_prefix=False, one condition at a time

A cell is "supported, max |diff| = x" (x <= TOLERANCE for logits and activations, 0 differing tokens
for generations), "refused: reason" (the adapter's `refused_operations`, raised before any work), or
"NOT EQUAL" (a bug: the script exits 1). tests/unit/test_compatibility.py checks the committed table.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlminterp.models.adapters import OPERATIONS, UnsupportedOperationError, adapter_for

TOLERANCE = 1e-4
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FIXTURES = ROOT.parent / "shared" / "fixtures"
GEMMA3_FOLDER = Path("processors") / "google--gemma-3-4b-it"
QWEN2_5_VL_FOLDER = Path("processors") / "Qwen--Qwen2.5-VL-7B-Instruct"
QWEN3_VL_FOLDER = Path("processors") / "Qwen--Qwen3-VL-8B-Instruct"
QWEN2_FOLDER = Path("processors") / "Qwen--Qwen2-VL-2B"  # LLaVA-OneVision's tokenizer files (Qwen2's)
SMOLVLM_FOLDER = Path("processors") / "HuggingFaceTB--SmolVLM-256M-Instruct"
COCO_IMAGE = Path("coco-mini") / "val2017" / "000000000139.jpg"
# Qwen's dynamic grid gives a 640 px image ~370 tokens and LLaVA-OneVision's anyres tiles ~2,700: the
# image is shrunk to this longest side first, so that each of the many full reference forwards
# (152k-word vocabularies) is quick.
SHRUNK_IMAGE_SIDE = 224
# family -> (label, synthetic variant name, or the shared-fixtures folder of a real config to shrink)
FAMILIES = {
    "llava": ("LLaVA (tiny-llama)", "tiny-llama"),
    "internvl": ("InternVL (tiny-internvl)", "tiny-internvl"),
    "qwen2_vl": ("Qwen2-VL (tiny-qwen2-vl)", "tiny-qwen2-vl"),
    "gemma3": ("Gemma 3 (gemma-3-4b-it config, shrunk)", GEMMA3_FOLDER),
    "qwen2_5_vl": ("Qwen2.5-VL (Qwen2.5-VL-7B-Instruct config, shrunk)", QWEN2_5_VL_FOLDER),
    "qwen3_vl": ("Qwen3-VL (Qwen3-VL-8B-Instruct config, shrunk)", QWEN3_VL_FOLDER),
    "llava_onevision": ("LLaVA-OneVision (qwen2-7b-ov config, shrunk)", QWEN2_FOLDER),
    "idefics3": ("Idefics3 (SmolVLM-256M-Instruct config, shrunk)", SMOLVLM_FOLDER),
}

# What each family needed beyond LLaVA's engine (printed under the table).
NOTES = {
    "internvl": "tiles + a thumbnail per image; image tokens of several tiles in one contiguous block.",
    "qwen2_vl": "M-RoPE: the engine passes the model's own 3-D position ids and continues them (index + delta).",
    "gemma3": "image tokens attend to each other bidirectionally: `model_inputs` always passes `token_type_ids` "
              "(without them transformers silently drops the block) and the adapter builds the same masks for "
              "the engine's text-model calls; the shared prefix never ends inside an image; sliding (window 8 in "
              "the tiny model) and global layers alternate; the projector is redrawn (its init is zero); "
              "re-prompted text after a kept cache is located by position, not cache slot.",
    "qwen2_5_vl": "M-RoPE as Qwen2-VL (absolute time ids only matter for video); the vision tower's windows "
                  "(112 px, full attention in some layers) are undone inside transformers, so tokens keep the "
                  "processor's row-major order. Trap: `inputs_embeds` without position ids, or `input_ids` "
                  "without `mm_token_type_ids`, silently run 1-D positions: the engine passes the model's own "
                  "3-D ids and `model_inputs` the token types.",
    "qwen3_vl": "DeepStack: the vision tower's intermediate features are added to the image tokens' hidden states "
                "after the first decoder layers (one per DeepStack layer) during the prefill. The adapter keeps "
                "them per input and injects them in every engine call on the prompt (located by cache slot); a "
                "token ablation also removes the injections at the ablated positions (engine via "
                "`adapter.ablating`, reference by editing the model's own DeepStack arguments); text after a "
                "kept cache is never injected. Same M-RoPE and 1-D trap as Qwen2.5-VL, 32 px tokens, no default "
                "system turn.",
    "llava_onevision": "any-resolution tiles plus a base image: the cell table is per image size (base grid, "
                       "the anyres grid after the model's unpadding); a newline token ends each anyres row: an "
                       "image-token position holding the learned `image_newline` vector, listed as a tile of its "
                       "own kind with no box (never an object cell; ablating or knocking out \"the image\" "
                       "includes it); `image_sizes` travels with the pixels; the `image_features` site is absent "
                       "(the projector's per-tile output is not the sequence's order); images whose anyres grid "
                       "the model interpolates (over 9 tiles' worth) are refused by name.",
    "idefics3": "other module paths (`text_model`, `connector`, `vision_model`); each image is tiles plus a "
                "global image, its image tokens several runs split by marker tokens (`<fake_token_around_image>`, "
                "`<row_r_col_c>`, `<global-img>`, newlines) that are no cell (`image_markers`, their own token "
                "group; K1's attention shares and K2's knockouts count them as the image: they have read the tiles "
                "before them); the "
                "pixel-shuffle geometry (8 x 8 tokens of 4 x 4 patches per tile); the adapter encodes the tiles "
                "itself and tells a batch's padding tiles by `pixel_attention_mask`, since transformers' "
                "`get_image_features` drops every all-zero (mid-grey) tile as padding. The tiny model runs the real processor at 1024 px "
                "(2 x 2 tiles + global).",
}


@dataclass(frozen=True)
class Cell:
    verdict: str  # "supported", "refused" or "NOT EQUAL"
    detail: str  # the max |diff| (or differing tokens), or the refusal's reason

    def markdown(self) -> str:
        """The table cell (pipes escaped: `max |diff|` inside a Markdown table)."""
        text = f"{self.verdict}: {self.detail}" if self.verdict == "refused" else f"{self.verdict}, {self.detail}"
        return text.replace("|", "\\|")


def _image(fixtures: Path) -> Image.Image:
    path = fixtures / COCO_IMAGE
    if path.exists():
        return Image.open(path).convert("RGB")
    rng = np.random.default_rng(0)  # no fixtures: the synthetic families still run on noise
    return Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))


def build_family(family: str, fixtures: Path):
    """(model, adapter, encoding) of one family's tiny model on one image and prompt."""
    from vlminterp.testing.synthetic import build_synthetic
    from vlminterp.testing.tiny_gemma3 import build_tiny_gemma3
    from vlminterp.testing.tiny_idefics3 import build_tiny_idefics3
    from vlminterp.testing.tiny_llava_onevision import build_tiny_llava_onevision
    from vlminterp.testing.tiny_qwen import build_tiny_qwen

    _, source = FAMILIES[family]
    if isinstance(source, Path):
        builder = {"gemma3": build_tiny_gemma3, "llava_onevision": build_tiny_llava_onevision,
                   "idefics3": build_tiny_idefics3}.get(family, build_tiny_qwen)
        model, processor = builder(fixtures / source)
        image = _image(fixtures)
        if family not in ("gemma3", "idefics3"):   # Idefics3's processor resizes to 1024 px anyway
            image.thumbnail((SHRUNK_IMAGE_SIDE, SHRUNK_IMAGE_SIDE))
    else:
        model, processor = build_synthetic(source, seed=0)
        image = _image(Path("/nonexistent"))  # the tiny grids need no real image; noise keeps them fast
    adapter = adapter_for(model, processor)
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=image, return_tensors="pt")
    return model, adapter, encoding


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _float_cell(value: float) -> Cell:
    return Cell("supported" if value <= TOLERANCE else "NOT EQUAL", f"max |diff| = {value:.1e}")


def _token_cell(got: list[list[int]], want: list[list[int]]) -> Cell:
    differing = sum(int(a != b) for g, w in zip(got, want) for a, b in zip(g, w)) + sum(
        abs(len(g) - len(w)) for g, w in zip(got, want))
    total = sum(len(w) for w in want)
    return Cell("supported" if differing == 0 else "NOT EQUAL", f"{differing} of {total} greedy tokens differ")


def measure_family(family: str, fixtures: Path = DEFAULT_FIXTURES) -> dict[str, Cell]:
    """{operation: Cell} for one family (see the module docstring)."""
    from vlminterp.interventions import (
        Ablation, Capture, From, InterventionEngine, Knockout, reference_generate, reference_logits)

    torch.manual_seed(0)
    model, adapter, encoding = build_family(family, fixtures)
    inputs = adapter.model_inputs(encoding["input_ids"], **adapter.image_inputs(encoding))
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    extra = {k: v for k, v in adapter.image_inputs(encoding).items() if k != "pixel_values"}
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    n = len(image)
    checked = [int(image[0]), int(image[n // 2]), int(image[-1]), length - 1]
    mean = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels, **extra)

    def against_reference(conditions) -> Cell:
        want = torch.stack([reference_logits(model, adapter, ids, pixels, c, **extra)[checked] for c in conditions])
        return _float_cell(_diff(engine.logits(prepared, conditions, positions=checked), want))

    ablations = [Ablation(image[n // 4: n // 2], mean), Ablation(image)]
    knockouts = [Knockout([length - 1], image, layers=[1]),
                 Knockout(range(int(image[-1]) + 1, length), image[::3], layers=[0, 2], heads=[0]),
                 Knockout(image[: n // 2], image[n // 2:])]

    def forward() -> Cell:
        with torch.no_grad():
            own = model(**inputs).logits[0, checked]
        return _float_cell(_diff(engine.logits(prepared, [None], positions=checked)[0], own))

    def generation() -> Cell:
        conditions = [None, Knockout(From(length - 1), image), Knockout(From(length), image[: n // 2], layers=[1])]
        got = engine.generate(prepared, conditions, max_new_tokens=4, eos_token_id=[]).tokens
        want = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=4, eos_token_id=[], **extra)
                for c in conditions]
        return _token_cell(got, want)

    def kept_caches() -> Cell:
        question = adapter.embed_tokens.weight.new_tensor(ids[0, -3:].tolist(), dtype=torch.long)[None]
        kept = engine.kept_caches(prepared, {"all": list(range(length))})
        got = engine.continue_cache(kept["all"], [question], max_new_tokens=4, eos_token_id=[])
        want = [reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, None, max_new_tokens=4,
                                   eos_token_id=[], **extra)]
        return _token_cell(got, want)

    def capture() -> Cell:
        layer = adapter.n_layers - 2
        read = Capture([f"resid_post.{layer}"], checked)
        engine.logits(prepared, [read])
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states[layer + 1][0, checked]
        return _float_cell(_diff(read.record[f"resid_post.{layer}"], hidden))

    def prefix_sharing() -> Cell:
        conditions = ablations + knockouts
        alone = InterventionEngine(model, adapter, share_prefix=False, max_batch_size=1)
        return _float_cell(_diff(engine.logits(prepared, conditions, positions=checked),
                                 alone.logits(prepared, conditions, positions=checked)))

    measures: dict[str, Callable[[], Cell]] = {
        "forward": forward, "ablation": lambda: against_reference(ablations),
        "knockout": lambda: against_reference(knockouts), "generation": generation, "kept_caches": kept_caches,
        "capture": capture, "prefix_sharing": prefix_sharing,
    }
    cells = {}
    for operation in OPERATIONS:
        try:
            cells[operation] = measures[operation]()
        except UnsupportedOperationError as error:
            cells[operation] = Cell("refused", str(error).split(" is refused: ", 1)[-1])
    return cells


def markdown(rows: dict[str, dict[str, Cell]]) -> str:
    """The table: one row per family, one column per operation, then the notes."""
    lines = [
        "# Compatibility: which engine operations each model family supports",
        "",
        "Generated by `python -m vlminterp.testing.compatibility` (do not edit by hand); checked by",
        "tests/unit/test_compatibility.py. Each family is a tiny random-weight model (float32, CPU, sdpa);",
        f"\"supported\" means the engine equals an independent computation to {TOLERANCE:.0e} (logits,",
        "activations) or token for token (greedy generations); \"refused\" means the engine raises",
        "`UnsupportedOperationError` naming the family before any work. What each column compares is in",
        "the docstring of src/vlminterp/testing/compatibility.py.",
        "",
        "| family | " + " | ".join(OPERATIONS) + " |",
        "| --- | " + " | ".join("---" for _ in OPERATIONS) + " |",
    ]
    for family, cells in rows.items():
        lines.append(f"| {FAMILIES[family][0]} | " + " | ".join(cells[op].markdown() for op in OPERATIONS) + " |")
    lines += ["", "What each family needed beyond LLaVA:", ""]
    lines += [f"- {FAMILIES[family][0]}: {NOTES[family]}" for family in rows if family in NOTES]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="the shared fixtures folder")
    parser.add_argument("--out", default=str(ROOT / "docs" / "COMPATIBILITY.md"), help="'-' for stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for family in args.families:
        label, source = FAMILIES[family]
        if isinstance(source, Path) and not (args.fixtures / source).exists():
            parser.error(f"{label} needs {args.fixtures / source} (the real config and processor)")
    rows = {family: measure_family(family, args.fixtures) for family in args.families}
    text = markdown(rows)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    return 1 if any(c.verdict == "NOT EQUAL" for cells in rows.values() for c in cells.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
