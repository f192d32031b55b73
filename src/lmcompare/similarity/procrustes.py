r"""Orthogonal Procrustes similarity (as in Ding et al., NeurIPS 2021, and Williams et al., 2021): with X and Y
centred and scaled to unit Frobenius norm, the squared Procrustes distance is

    d² = min_{R orthogonal} ||X R - Y||_F² = 2 - 2 ||X^T Y||_*      (||.||_*: nuclear norm, sum of singular values)

(for d_x != d_y, R is a partial isometry, as for the narrower side padded with zero columns), and the similarity
is 1 - d²/2 = ||Sxy||_* / sqrt(tr Sxx tr Syy) of the co-moment blocks of the centred rows. Invariant to orthogonal
transforms and isotropic scaling of either side; 1 iff Y = c X Q.
"""

import numpy as np


def procrustes_similarity(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray) -> float:
    """||Sxy||_* / sqrt(tr Sxx tr Syy)."""
    denominator = np.sqrt(np.trace(sxx) * np.trace(syy))
    return float(np.linalg.svd(sxy, compute_uv=False).sum() / denominator) if denominator > 0 else float("nan")
