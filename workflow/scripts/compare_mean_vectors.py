"""Rule compare_mean_vectors: this run's mean image embedding against the authors' (cosine, norm ratio);
their vector is also written in the run's format, for neo.ablation.mean_vector: authors."""
import json

from vlminterp.data.authors_data import compare_means, load_authors_mean
from vlminterp.experiments.neo.mean_embedding import load_mean_embedding, save_mean_embedding
from vlminterp.io import atomic_path
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]) as log:
    run_mean = load_mean_embedding(snakemake.input.run)
    authors_mean = load_authors_mean(snakemake.input.authors, hidden_size=run_mean.numel())
    comparison = {"authors_file": snakemake.input.authors, **compare_means(run_mean, authors_mean)}
    log.info("cosine %.4f, norm ratio (run / authors) %.4f", comparison["cosine"], comparison["norm_ratio"])
    with atomic_path(snakemake.output.comparison) as tmp:
        tmp.write_text(json.dumps(comparison, indent=2) + "\n")
    save_mean_embedding(authors_mean, 0, [], snakemake.output.authors_mean)
