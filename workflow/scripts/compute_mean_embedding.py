"""Rule compute_mean_embedding: streaming mean of the post-projector image embedding (N1's ablation vector)."""
from vlminterp.batching import AdaptiveBatch
from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo_common import compute_mean_embedding, save_mean_embedding
from vlminterp.io import read_table
from vlminterp.models.adapters import adapter_for
from vlminterp.models.loading import ModelSpec, load_model
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed) as log:
    params = snakemake.params
    model, processor = load_model(ModelSpec(**params.model))
    adapter = adapter_for(model, processor)
    dataset = CocoDataset.load(params.dataset_dir, params.mean["split"])
    image_ids = [int(i) for i in read_table(snakemake.input.images)["image_id"]]
    batches = AdaptiveBatch(params.mean["batch_size"], "mean embedding")
    mean, count = compute_mean_embedding(adapter, processor, dataset, image_ids, params.geometry, batch_size=batches)
    log.info("mean of %d vectors from %d images of split %s", count, len(image_ids), params.mean["split"])
    save_mean_embedding(mean, count, image_ids, snakemake.output[0], batching=batches.columns())
