"""Rule twotower_preference: per-type preference, its consistency, its distribution, the top tokens, the histories."""
from job import job_log
from lmcompare.files import write_table
from lmcompare.models.loading import load_tokenizer
from lmcompare.twotower.preference import join_histories, preference_tables

with job_log(snakemake):  # noqa: F821
    section = dict(snakemake.params.twotower)  # noqa: F821
    tables = preference_tables(snakemake.input.logprobs, load_tokenizer(snakemake.input.model),  # noqa: F821
                               model=snakemake.wildcards.model, dataset=snakemake.wildcards.dataset,  # noqa: F821
                               min_count=section["min_count"], permutations=section["control_permutations"],
                               top_k=section["top_k"], control_seed=section["control_seed"])
    for name, table in tables.items():
        write_table(table, getattr(snakemake.output, name))  # noqa: F821
    write_table(join_histories(snakemake.input.histories), snakemake.output.history)  # noqa: F821
