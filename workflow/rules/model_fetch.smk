# The pinned hub model, fetched into the Hugging Face cache before any model job (a config whose
# model.pretrained.id is a hub id; the organism and local model directories need no fetch).


rule fetch_model:
    localrule: True
    output:
        results("model_fetch/manifest.json"),
    params:
        id=config["model"]["pretrained"]["id"],
        revision=config["model"]["pretrained"]["revision"],
    log:
        logs("fetch_model"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/fetch_model.py"
