"""Rule geometry_regression: the regression of the models' score on each geometry measure, for one dataset."""
from job import job_log
from lmcompare.geometry import write_regression

with job_log(snakemake):  # noqa: F821
    p = snakemake.params  # noqa: F821
    write_regression(snakemake.input.measures, snakemake.output.measures, snakemake.output.scores,  # noqa: F821
                     snakemake.output.regression, score_source=p.score_source,  # noqa: F821
                     score_paths=snakemake.input.get("scores", []),  # noqa: F821
                     score_table=snakemake.input.get("score_table"),  # noqa: F821
                     models=p.models, dataset=snakemake.wildcards.dataset, score_name=p.score_name,  # noqa: F821
                     min_models=p.min_models, bootstrap=p.bootstrap, permutations=p.permutations,
                     confidence=p.confidence, seed=p.seed)
