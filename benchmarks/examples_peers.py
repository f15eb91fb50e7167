"""The three worked examples of docs/INTERVENTIONS.md next to the same in nnsight and TransformerLens.

    pip install -r requirements.lock -r requirements-bench.lock
    python -m benchmarks.examples_peers          # tiny random LLaVA (open_model("tiny-llama")), CPU, seconds

Each peer version below is what a user of that library writes for the same question on the same
model and input (the model opened by `open_model` only because neither peer builds a tiny random
VLM; from there on they use their own API and the Hugging Face processor). Every version runs and
its answer is checked equal to the engine's (the doc example's): patch -> the two greedy answers,
steer -> the three logits, ablate -> the 4 x 4 effect matrix. Line counts: non-blank, non-comment
lines of each version as written here. Results in benchmarks/results/examples_peers.json.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "INTERVENTIONS.md"
TITLES = {"patch": "Patch an object's tokens from image A into image B and read the answer",
          "steer": "Steer the residual stream", "ablate": "Ablate one attention head"}


def engine_examples() -> dict[str, str]:
    text = DOC.read_text()
    out = {}
    for title, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |^## |\Z)", text, flags=re.S | re.M):
        for key, wanted in TITLES.items():
            if title.strip() == wanted:
                out[key] = re.findall(r"```python\n(.*?)```", body, flags=re.S)[0]
    return out


NNSIGHT = {
    "patch": '''
import numpy as np
from PIL import Image
from nnsight import TransformersModel
from vlminterp.api import open_model

hf = open_model("tiny-llama")
model = TransformersModel(hf.model, task="image-text-to-text", processor=hf.adapter.processor)
processor = model.processor
image_a, image_b = (Image.fromarray(np.random.default_rng(s).integers(0, 256, (48, 64, 3), dtype=np.uint8))
                    for s in (1, 2))
prompt = "USER: <image>\\nWhat is in the image? ASSISTANT:"
a, b = (processor(images=image, text=prompt, return_tensors="pt") for image in (image_a, image_b))
first = int((b["input_ids"][0] == model.config.image_token_id).nonzero()[0, 0])
positions = [first + k for k in (0, 1, 4, 5)]   # the same image tokens in both (one 4x4 grid)
layer = model.model.language_model.layers[1]
with model.trace(**a):
    source = layer.output[:, positions].save()
def answer(patch):
    with model.generate(**b, max_new_tokens=8, do_sample=False) as tracer:
        if patch:
            layer.output[:, positions] = source   # the first step (the prefill) only
        ids = tracer.result.save()
    return processor.decode(ids[0, b["input_ids"].shape[1]:], skip_special_tokens=True)
clean, patched = answer(False), answer(True)
''',
    "steer": '''
import numpy as np
from PIL import Image
from nnsight import NNsight
from vlminterp.api import open_model

hf = open_model("tiny-llama")
model, processor = NNsight(hf.model), hf.adapter.processor
image = Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8))
x = processor(images=image, text="USER: <image>\\nWhat colour is it? ASSISTANT:", return_tensors="pt")
token = processor.tokenizer("red", add_special_tokens=False).input_ids[0]
direction = hf.model.lm_head.weight[token].detach()
rising = []
for scale in (0.0, 2.0, 8.0):
    with model.trace(**x):
        for layer in (2, 3):
            model.model.language_model.layers[layer].output[:, -1] += scale * direction
        rising.append(model.lm_head.output[0, -1, token].save())
rising = torch.stack(rising)
''',
    "ablate": '''
import numpy as np
from PIL import Image
from nnsight import NNsight
from vlminterp.api import open_model

hf = open_model("tiny-llama")
model, processor = NNsight(hf.model), hf.adapter.processor
image = Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8))
x = processor(images=image, text="USER: <image>\\nDescribe the image. ASSISTANT:", return_tensors="pt")
d = hf.model.config.text_config.head_dim
with model.trace(**x):
    clean = model.lm_head.output[0, -1].save()
effect = torch.zeros(4, 4)
for layer in range(4):
    for head in range(4):
        with model.trace(**x):
            model.model.language_model.layers[layer].self_attn.o_proj.input[:, :, head * d:(head + 1) * d] = 0
            logits = model.lm_head.output[0, -1].save()
        effect[layer, head] = (logits - clean).abs().max()
''',
}

TRANSFORMER_LENS = {
    "patch": '''
import numpy as np
from PIL import Image
from vlminterp.api import open_model

hf = open_model("tiny-llama")
bridge, processor = boot_bridge(hf), hf.adapter.processor
image_a, image_b = (Image.fromarray(np.random.default_rng(s).integers(0, 256, (48, 64, 3), dtype=np.uint8))
                    for s in (1, 2))
prompt = "USER: <image>\\nWhat is in the image? ASSISTANT:"
a, b = (processor(images=image, text=prompt, return_tensors="pt") for image in (image_a, image_b))
first = int((b["input_ids"][0] == hf.model.config.image_token_id).nonzero()[0, 0])
positions = [first + k for k in (0, 1, 4, 5)]
_, cache = bridge.run_with_cache(a["input_ids"], pixel_values=a["pixel_values"], names_filter="blocks.1.hook_out")
source = cache["blocks.1.hook_out"][:, positions]
def patch(hidden, hook):
    if hidden.shape[1] > max(positions):   # the prefill only
        hidden[:, positions] = source
    return hidden
def answer(hooks):
    with bridge.hooks(fwd_hooks=hooks):
        out = bridge.original_model.generate(**b, max_new_tokens=8, do_sample=False)
    return processor.decode(out[0, b["input_ids"].shape[1]:], skip_special_tokens=True)
clean, patched = answer([]), answer([("blocks.1.hook_out", patch)])
''',
    "steer": '''
import numpy as np
from PIL import Image
from vlminterp.api import open_model

hf = open_model("tiny-llama")
bridge, processor = boot_bridge(hf), hf.adapter.processor
image = Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8))
x = processor(images=image, text="USER: <image>\\nWhat colour is it? ASSISTANT:", return_tensors="pt")
token = processor.tokenizer("red", add_special_tokens=False).input_ids[0]
direction = hf.model.lm_head.weight[token].detach()
rising = []
for scale in (0.0, 2.0, 8.0):
    def steer(hidden, hook, scale=scale):
        hidden[:, -1] += scale * direction
        return hidden
    hooks = [(f"blocks.{layer}.hook_out", steer) for layer in (2, 3)]
    logits = bridge.run_with_hooks(x["input_ids"], pixel_values=x["pixel_values"], fwd_hooks=hooks)
    rising.append(logits[0, -1, token])
rising = torch.stack(rising)
''',
    "ablate": '''
import numpy as np
from PIL import Image
from vlminterp.api import open_model

hf = open_model("tiny-llama")
bridge, processor = boot_bridge(hf), hf.adapter.processor
image = Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8))
x = processor(images=image, text="USER: <image>\\nDescribe the image. ASSISTANT:", return_tensors="pt")
clean = bridge(x["input_ids"], pixel_values=x["pixel_values"])[0, -1]
effect = torch.zeros(4, 4)
for layer in range(4):
    for head in range(4):
        def ablate(z, hook, head=head):
            z[:, :, head] = 0
            return z
        logits = bridge.run_with_hooks(x["input_ids"], pixel_values=x["pixel_values"],
                                       fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        effect[layer, head] = (logits[0, -1] - clean).abs().max()
''',
}


def boot_bridge(vlm):
    """TransformerLens 4's bridge over the model (benchmarks.peers_knockout.boot_bridge)."""
    from types import SimpleNamespace

    from benchmarks.peers_knockout import boot_bridge as boot

    vlm.model.set_attn_implementation("eager")  # the bridge runs eager: the engine's reference the same
    return boot(SimpleNamespace(model=vlm.model, processor=vlm.adapter.processor, device="cpu"))


def lines(source: str) -> int:
    return sum(1 for line in source.strip().splitlines() if line.strip() and not line.strip().startswith("#"))


def run(source: str, name: str) -> dict:
    """Run one version from a file (nnsight reads a trace's `with` block back from its source file)."""
    import runpy
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name.replace(" ", "_") + ".py")
        path.write_text(source)
        with torch.no_grad():
            return runpy.run_path(str(path), init_globals={"torch": torch, "boot_bridge": boot_bridge})


def answers(key: str, scope: dict):
    if key == "patch":
        return scope["clean"], scope["patched"]
    return scope["rising" if key == "steer" else "effect"].detach().float().reshape(-1)


def same(a, b) -> tuple[bool, float | None]:
    if isinstance(a, tuple):
        return a == b, None
    diff = (a - b).abs().max().item()
    return diff < 1e-4, diff


def main() -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    engine = engine_examples()
    result = {"benchmark": "examples_peers", "model": "tiny-llama (random weights, 4 layers x 4 heads)",
              "peers": {"nnsight": importlib.metadata.version("nnsight"),
                        "transformer-lens": importlib.metadata.version("transformer-lens")},
              "line_counts": {}, "equal_to_engine": {}, "max_abs_diff": {}, "errors": {}}
    for key in TITLES:
        reference = answers(key, run(engine[key], f"engine {key}"))
        if key == "patch":  # the comparison means something only if the patch changes the answer
            result["patch_changes_the_answer"] = reference[0] != reference[1]
        counts = {"engine": lines(engine[key])}
        for peer, sources in (("nnsight", NNSIGHT), ("transformer_lens", TRANSFORMER_LENS)):
            counts[peer] = lines(sources[key])
            try:
                got = answers(key, run(sources[key], f"{peer} {key}"))
            except Exception as error:  # recorded, not hidden: a peer version that does not run
                result["errors"][f"{peer}/{key}"] = f"{type(error).__name__}: {str(error)[:300]}"
                continue
            equal, diff = same(reference, got)
            result["equal_to_engine"][f"{peer}/{key}"] = equal
            result["max_abs_diff"][f"{peer}/{key}"] = diff
        result["line_counts"][key] = counts
        print(key, counts, {k: v for k, v in result["equal_to_engine"].items() if k.endswith(key)}, flush=True)
    out = ROOT / "benchmarks" / "results" / "examples_peers.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
