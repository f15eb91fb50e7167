# Model organism: a tiny LLaVA trained from scratch on the shapes world, then evaluated.


rule train_organism:
    input:
        world=get_dataset_dir(),
    output:
        model=directory(results("model")),  # save_pretrained files + losses.csv + organism.json
    params:
        spec=config["model"]["organism"],
        seed=SEED,
    threads: model_threads()
    resources:
        **model_resources(),
    log:
        logs("train_organism"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/train_organism.py"


rule plot_training_curve:
    localrule: True
    input:
        model=results("model"),
    output:
        png=figure("organism/training_loss.png", "training_loss", "Model organism"),
        pdf=results("organism/training_loss.pdf"),
    log:
        logs("plot_training_curve"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_training_curve.py"


rule evaluate_organism:
    input:
        model=results("model"),
        world=get_dataset_dir(),
    output:
        table=results("organism/evaluation.csv"),
        summary=report(results("organism/evaluation_summary.csv"),
                       caption=caption("evaluation_summary"), category="Model organism"),
    params:
        split=config["evaluation"]["split"],
        max_images=config["evaluation"]["max_images"],
        batch_size=config["evaluation"]["batch_size"],
        seed=SEED,
    threads: model_threads()
    resources:
        **model_resources(),
    log:
        logs("evaluate_organism"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/evaluate_organism.py"


rule plot_organism_evaluation:
    localrule: True
    input:
        rules.evaluate_organism.output.summary,
    output:
        png=figure("organism/evaluation.png", "evaluation", "Model organism"),
        pdf=results("organism/evaluation.pdf"),
    log:
        logs("plot_organism_evaluation"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_organism_evaluation.py"
