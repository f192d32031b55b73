"""Rule similarity_sweep: the layer sweep's pair tables joined, the best-matching layer per layer, its figures."""
from job import job_log
from lmcompare.similarity.sweep import write_sweep_join

with job_log(snakemake):  # noqa: F821
    p, out = snakemake.params, snakemake.output  # noqa: F821
    write_sweep_join(out.table, out.best, snakemake.input.pairs, measures=p.measures, model_index=p.model_index,  # noqa: F821
                     figure_paths={m: [png, svg] for m, png, svg in zip(p.measures, out.png, out.svg)})
