"""Rule geometry_score: one model's downstream score, its linear-probe accuracy on a labelled dataset."""
from job import job_log
from lmcompare.geometry import score_model
from lmcompare.runtime import blas_threads

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821  (small fits: extra BLAS threads cost CPU)
    p = snakemake.params  # noqa: F821
    score_model(snakemake.input.pooled, snakemake.output.score,  # noqa: F821
                model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset,  # noqa: F821
                layer=p.layer, pooling=p.pooling, protocol=p.protocol, folds=p.folds, seed=p.seed,
                threads=snakemake.threads, cv_splits=p.cv_splits)  # noqa: F821
