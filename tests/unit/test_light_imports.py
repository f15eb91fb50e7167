"""Every `snakemake` start parses the Snakefile (dry runs, each SLURM jobstep) and every cheap
rule's job runs a script: neither may import torch or transformers (about 5 CPU-s each).

Checked in fresh interpreters: the library modules the workflow's .smk files import, with the
config checks of tests/configs/tiny.yaml and every spec of `config_checks.section_specs()` built;
and, per local rule (`localrule: True` in workflow/rules/) but those that need the model's
libraries, its script's imports (for workflow/scripts/run_stage.py, the function the stage
registry runs for that rule). The failure names the rule and the line that loaded the library.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "workflow" / "rules"
HEAVY = ("torch", "transformers")

#: Local rules that need the model's libraries: fetch_model downloads the model, map_object_cells
#: reads the geometry of its processor (`models.loading.load_adapter(weights=False)`).
NEEDS_MODEL = {"fetch_model": "downloads the model", "map_object_cells": "reads the model's processor"}

# Runs in the checked interpreter: records where the first import of each heavy library came from.
WATCH = """
import importlib.abc, sys, traceback
HEAVY = %r
FIRST = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in FIRST:
            frames = [f for f in traceback.extract_stack() if "vlminterp" in f.filename or "workflow" in f.filename]
            FIRST[name] = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        return None
sys.meta_path.insert(0, Watch())
""" % (HEAVY,)


def run_checked(code: str) -> dict:
    """The JSON the last line of `code`'s output holds, run in a fresh interpreter after WATCH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", WATCH + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def workflow_imports() -> list[str]:
    """The library modules the Snakefile and workflow/rules/*.smk import (at parse or in input functions)."""
    texts = [(ROOT / "Snakefile").read_text(), *(path.read_text() for path in sorted(RULES.glob("*.smk")))]
    return sorted({m for text in texts for m in re.findall(r"^\s*from (vlminterp[\w.]*) import", text, re.M)})


def local_rules() -> dict[str, str]:
    """Each local rule's name -> its script's path (rules with a `script:`; `run:` ones run in Snakemake)."""
    rules = {}
    for path in sorted(RULES.glob("*.smk")):
        for block in re.split(r"^(?=[ \t]*rule \w+:)", path.read_text(), flags=re.M)[1:]:
            name = re.match(r"\s*rule (\w+):", block).group(1)
            script = re.search(r"^\s*script:\s*\n?\s*\"([^\"]+)\"", block, re.M)
            if re.search(r"^\s*localrule:\s*True", block, re.M) and script:
                rules[name] = str((path.parent / script.group(1)).resolve())
    return rules


def test_the_snakefile_parse_loads_neither_torch_nor_transformers():
    modules = workflow_imports()
    assert "vlminterp.workflow.config_checks" in modules and "vlminterp.workflow.registry" in modules
    result = run_checked(f"""
import dataclasses, importlib, json, yaml
from pathlib import Path
for module in {modules!r}:
    importlib.import_module(module)
from vlminterp.workflow.config_checks import check_config, config_section, section_specs
from vlminterp.specs import build_spec
config = check_config(yaml.safe_load(Path("tests/configs/tiny.yaml").read_text()),
                      Path("workflow/schemas/config.schema.yaml"), ["tiny.yaml"])
built = []
for dotted, (cls, _) in section_specs().items():
    seed = {{"seed": 0}} if "seed" in {{f.name for f in dataclasses.fields(cls)}} else {{}}
    built.append(type(build_spec(cls, config_section(config, dotted), where=dotted, **seed)).__name__)
print(json.dumps({{"loaded": FIRST, "built": built}}))
""")
    assert {"OrganismSpec", "AblationSpec", "KnockoutSpec", "PatchingSpec"} <= set(result["built"])
    assert result["loaded"] == {}, f"the Snakefile's parse imports {result['loaded']} (library: first import site)"


def test_no_cheap_rule_job_loads_torch_or_transformers():
    rules = {name: script for name, script in local_rules().items() if name not in NEEDS_MODEL}
    assert {"summarize_token_ablation", "plot_logit_lens", "compare_with_papers", "select_neo_targets",
            "build_reprompt_questions", "validate_methods", "gather_group_knockouts"} <= set(rules)
    assert set(NEEDS_MODEL) <= set(local_rules()), "a rule of NEEDS_MODEL is gone or no longer local"
    # The third-party libraries every job shares are imported once; each rule's check runs in a fork.
    result = run_checked(f"""
import ast, json, os, tempfile
import matplotlib, numpy, pandas, PIL.Image, pycocotools.coco, requests, tqdm, yaml
matplotlib.use("Agg")
import matplotlib.pyplot
loaded = {{}}
for rule, script in {rules!r}.items():
    read, write = os.pipe()
    if os.fork() == 0:
        try:
            os.close(read)
            tree = ast.parse(open(script).read())
            imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(imports, []), script, "exec"), {{}})
            if script.endswith("run_stage.py"):
                from vlminterp.workflow.registry import by_rule, stage_function
                assert not by_rule(rule).model, f"{{rule}} loads the model but is local"
                stage_function(rule)
            from vlminterp.workflow.runtime import rule_context
            with rule_context(os.path.join(tempfile.mkdtemp(), "rule.log"), seed=0):
                pass
            payload = FIRST
        except BaseException as error:
            payload = {{"error": repr(error)}}
        finally:
            os.write(write, json.dumps(payload).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.wait()
    loaded[rule] = json.loads(text) if text else "the check failed"
print(json.dumps(loaded))
""")
    assert set(result) == set(rules)
    heavy = {rule: where for rule, where in result.items() if where}
    assert heavy == {}, f"cheap rules whose job imports torch/transformers (first import site): {heavy}"
