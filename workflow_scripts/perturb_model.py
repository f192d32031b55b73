"""Rule perturb_model: a base model with seeded Gaussian noise on its encoder weights (the geometry family)."""
from job import job_log
from lmcompare.models.perturb import perturb_model_folder
from lmcompare.runtime import torch_threads

with job_log(snakemake):  # noqa: F821
    torch_threads(snakemake.threads)  # noqa: F821
    p = snakemake.params  # noqa: F821
    perturb_model_folder(snakemake.input.base, snakemake.output.model, alpha=p.alpha, seed=p.seed,  # noqa: F821
                         base_name=p.base, tensors=p.tensors, trust_remote_code=p.trust_remote_code,
                         seed_source=p.seed_source, family=p.family)
