"""Neo et al. stages (N1-N3) in the whole tiny DAG: outputs, tables, reruns, shards, organism checks.

The organism checks read the tiny run's tables. They can also be pointed at another run's results
(the default organism, a bigger one) with VLMINTERP_NEO_RUN=<results/<run> directory>, e.g.
    VLMINTERP_NEO_RUN=results/shapes-organism pytest tests/workflow/test_neo_stages.py -k organism
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from shared_run import copy_tiny_run
from snakemake_runner import TINY_CONFIG, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

TINY = yaml.safe_load(TINY_CONFIG.read_text())
RUN = TINY["run"]
NEO_RULES = {"select_neo_targets", "map_object_cells", "compute_mean_embedding", "ablate_object_tokens",
             "gather_token_ablation", "summarize_token_ablation", "plot_token_ablation", "apply_logit_lens",
             "gather_logit_lens_topk", "gather_logit_lens_scores", "summarize_logit_lens", "plot_logit_lens",
             "write_logit_lens_pages", "block_object_attention", "gather_attention_blocking",
             "summarize_attention_blocking", "plot_attention_blocking"}


def _planned_rules(dry_run_stdout: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", dry_run_stdout, flags=re.M))


@pytest.fixture(scope="module")
def neo_dir(tiny_run) -> Path:
    return tiny_run / "results" / RUN / "neo"


@pytest.fixture(scope="module")
def organism_tables(request) -> dict[str, pd.DataFrame]:
    """Tables of the run the organism checks read: VLMINTERP_NEO_RUN, or else the tiny run."""
    other = os.environ.get("VLMINTERP_NEO_RUN")
    root = Path(other or request.getfixturevalue("tiny_run") / "results" / RUN) / "neo"
    return {"ablation": pd.read_csv(root / "ablation" / "ablation.csv"),
            "blocking": pd.read_csv(root / "blocking" / "blocking.csv")}


def test_every_neo_output_exists(neo_dir, tiny_run):
    for path in ["selection.csv", "cells.csv", "mean_embedding.safetensors",
                 "ablation/ablation.csv", "ablation/flip_rates.png", "ablation/flip_rates.pdf",
                 "logit_lens/topk.csv.gz", "logit_lens/scores.csv", "logit_lens/lens_curves.png",
                 "logit_lens/lens_curves.pdf", "logit_lens/pages/index.html",
                 "logit_lens/scores_by_category.csv", "logit_lens/null_control.csv",
                 "blocking/blocking.csv", "blocking/blocking_drops.png", "blocking/blocking_drops.pdf",
                 "ablation/summary.csv", "logit_lens/summary.csv", "blocking/summary.csv"]:
        assert (neo_dir / path).is_file(), f"missing neo/{path}"
    pages = list((neo_dir / "logit_lens" / "pages").glob("image_*.html"))
    assert len(pages) == TINY["neo"]["logit_lens"]["html_images"]


def test_tables_have_one_row_per_image_and_condition(neo_dir):
    selection = pd.read_csv(neo_dir / "selection.csv")
    assert 0 < len(selection) <= TINY["neo"]["selection"]["max_images"]
    images = set(selection["image_id"])
    ablation = pd.read_csv(neo_dir / "ablation" / "ablation.csv")
    assert set(ablation["image_id"]) == images  # every image kept, included or not
    keys = ["image_id", "setting", "question_kind", "condition"]
    assert not ablation.duplicated(keys).any()
    assert (ablation.groupby(["image_id", "setting", "question_kind"])["condition"]
            .apply(lambda c: (c == "none").sum() == 1)).all()
    scores = pd.read_csv(neo_dir / "logit_lens" / "scores.csv")
    n_layers = scores["layer"].nunique()
    cells = pd.read_csv(neo_dir / "cells.csv", keep_default_na=False)
    visible = images - set(cells.loc[cells["excluded"] != "", "image_id"])  # N2 skips excluded targets
    assert set(scores["image_id"]) == visible and len(scores) == len(visible) * n_layers * 2
    topk = pd.read_csv(neo_dir / "logit_lens" / "topk.csv.gz")
    assert set(topk["layer"]) == set(scores["layer"]) and set(topk["image_id"]) == visible
    blocking = pd.read_csv(neo_dir / "blocking" / "blocking.csv")
    assert set(blocking["image_id"]) == images
    assert not blocking.duplicated(["image_id", "block_set", "window_kind", "window"]).any()
    sliding = blocking[blocking["window_kind"] == "sliding"]
    assert sliding["window_start"].nunique() == n_layers - 1  # one window per decoder layer


def test_forcerun_of_a_neo_stage_reruns_it_and_its_dependents_only(tiny_run):
    proc = snakemake(tiny_run, "-n", "--cores", "1", "--forcerun", "ablate_object_tokens")
    # compare_with_papers reads the N1 table too (papers/paper_comparison.csv)
    assert _planned_rules(proc.stdout) == {"ablate_object_tokens", "gather_token_ablation", "summarize_token_ablation",
                                           "plot_token_ablation", "compare_with_papers", "all"}
    proc = snakemake(tiny_run, "-n", "--cores", "1", "--forcerun", "map_object_cells")
    planned = _planned_rules(proc.stdout)
    patching = {"patch_object_tokens", "summarize_object_patching", "plot_object_patching"}  # it reads the cells too
    assert planned == NEO_RULES - {"select_neo_targets", "compute_mean_embedding"} | {"compare_with_papers", "all"} | patching


@pytest.mark.skipif(os.environ.get("VLMINTERP_REQUIRE_SLURM") == "1",
                    reason="the SLURM test reruns every sharded stage on the cluster and compares every file")
def test_sharded_tables_equal_the_unsharded_ones(tiny_run, tmp_path):
    """Two shard jobs per stage give exactly the tables of the one-shard run."""
    workdir = tmp_path / "sharded"
    copy_tiny_run(tiny_run, workdir)
    config = {**TINY, "sharding": {"images_per_shard": 12}}
    config_file = tmp_path / "sharded.yaml"
    config_file.write_text(yaml.safe_dump(config))
    tables = ["neo/ablation/ablation.csv", "neo/logit_lens/scores.csv", "neo/logit_lens/topk.csv.gz",
              "neo/blocking/blocking.csv"]
    snakemake(workdir, "--cores", "2", *[f"results/{RUN}/{t}" for t in tables], configfile=config_file)
    assert len(list((workdir / "results" / RUN / "neo" / "ablation" / "shards").glob("*.csv"))) >= 2
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_csv(workdir / "results" / RUN / table),
                                      pd.read_csv(tiny_run / "results" / RUN / table), check_exact=False, rtol=1e-5)


# ---- organism checks ------------------------------------------------------------------------------------
def test_organism_object_ablation_flips_more_than_matched_random_background(organism_tables):
    """Ablating the object's tokens flips far more identifications than as many background tokens.

    Only settings in which the organism uses the image at all are judged: a setting where ablating
    EVERY image token flips fewer than half of the correct answers (e.g. an organism that answers
    every polling question "Yes") says nothing about which tokens carry the object. At least one
    setting must qualify, and every qualifying one must show the effect.
    """
    table = organism_tables["ablation"]
    included = table[table["included"].astype(bool)]
    rates = included.groupby(["setting", "condition"])["flipped"].mean().unstack("setting")
    counts = included[included["condition"] == "none"].groupby("setting").size()
    judged = [s for s in rates.columns if counts.get(s, 0) >= 8 and rates.loc["all_image", s] >= 0.5]
    assert judged, f"no setting where the organism uses the image:\n{rates.round(2)}\nincluded: {counts.to_dict()}"
    for setting in judged:
        obj, rand = rates.loc["object_b0", setting], rates.loc["random_matched_b0", setting]
        assert obj >= rand + 0.3, f"{setting}: object_b0 flips {obj:.2f}, matched random {rand:.2f}\n{rates.round(2)}"


def test_organism_polling_drops_to_chance_without_the_image(organism_tables):
    """Ablating every image token brings polling accuracy (present + absent questions) to 50% +- 10 points."""
    polling = organism_tables["ablation"]
    polling = polling[polling["setting"] == "polling"]
    accuracy = polling.groupby("condition")["success"].mean()
    assert accuracy["none"] >= 0.8, (
        f"the organism answers polling at {accuracy['none']:.2f} even with the image (it says "
        f"{polling.loc[polling.condition == 'none', 'answer'].str.split().str[0].mode()[0]!r} most often), so "
        "'drops to chance' cannot be tested on it")
    assert abs(accuracy["all_image"] - 0.5) <= 0.10, f"all-image ablation leaves polling accuracy {accuracy['all_image']:.2f}"


def test_report_holds_the_neo_figures(tiny_run):
    snakemake(tiny_run, "--report", "results/neo_report.html", "--cores", "1")
    html = (tiny_run / "results" / "neo_report.html").read_text(errors="replace")
    for name in ("flip_rates.png", "lens_curves.png", "blocking_drops.png"):
        assert name in html
