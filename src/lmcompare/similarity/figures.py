"""The stage's figure: per measure, a symmetric models x models heatmap of the similarity table."""

from typing import Sequence

import numpy as np

from lmcompare import plotting

TITLES = {
    "cka": "linear CKA",
    "cka_debiased": "debiased linear CKA",
    "cca_mean": "mean canonical correlation",
    "cca_mean_squared": "mean squared canonical correlation (Yanai's R²)",
    "svcca": "SVCCA (mean canonical correlation of the top principal directions)",
    "pwcca": "PWCCA (projection-weighted canonical correlation)",
    "procrustes": "orthogonal Procrustes similarity",
}


def similarity_matrix(table, measure: str, models: Sequence[str]) -> np.ndarray:
    """The symmetric matrix of one measure (rows and columns in `models` order); 1 on the diagonal (each measure of
    a representation with itself), nan for a pair the table lacks."""
    index = {model: k for k, model in enumerate(models)}
    matrix = np.full((len(models), len(models)), np.nan)
    np.fill_diagonal(matrix, 1.0)
    for row in table[table["measure"] == measure].itertuples():
        i, j = index[row.model_a], index[row.model_b]
        matrix[i, j] = matrix[j, i] = row.value
    return matrix


def plot_similarity(table, measure: str, models: Sequence[str], paths: Sequence[str], where: str) -> None:
    """The heatmap of one measure (similarity_matrix), saved to paths."""
    models = list(models)
    n_units = int(table["n_units"].min()) if len(table) else 0
    plotting.annotated_heatmap(similarity_matrix(table, measure, models), models, colorbar_label=measure, paths=paths,
                               title=f"{TITLES[measure]}\n({where}; {n_units} units; diagonal: each model with itself, 1)")
