"""Rule decomposition_fit: group and pairwise fits of every model from the pair files, as three tables."""
from job import job_log
from lmcompare.decomposition.fit import write_fit_tables
from lmcompare.decomposition.tags import alpha_from_tag
from lmcompare.runtime import blas_threads

with job_log(snakemake), blas_threads(snakemake.threads):  # noqa: F821
    p, wc, out = snakemake.params, snakemake.wildcards, snakemake.output  # noqa: F821
    write_fit_tables(p.pairs, snakemake.input.moments, p.models, alpha_from_tag(wc.alpha), wc.mode,  # noqa: F821
                     alpha_grid=p.alpha_grid, min_train=p.min_train_units, min_test=p.min_test_units,
                     dataset=wc.dataset, unit=wc.unit, group_path=out.group, pairwise_path=out.pairwise,
                     matrix_path=out.matrix, hidden_files=snakemake.input.hidden)  # noqa: F821
