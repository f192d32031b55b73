"""The statistics every measure is a function of, for two models' representations X (n x d_x) and Y (n x d_y) of
the same units: the count n, the co-moment blocks Sxx = Xc^T Xc, Syy = Yc^T Yc, Sxy = Xc^T Yc of the centred
rows (Xc = X - mean), and three fourth-order sums of the centred rows' squared norms a_i = ||x_i - mean_x||²,
b_i = ||y_i - mean_y||²: sum a_i², sum b_i², sum a_i b_i (the debiased CKA's; lmcompare/similarity/cka.py).

From a pair file they come from the exact merge of its splits (PairMoments.all_units): every unit of the pair.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class PairStatistics:
    n: int
    sxx: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray
    norm4_x: float  # sum_i a_i²
    norm4_y: float  # sum_i b_i²
    norm_xy: float  # sum_i a_i b_i

    @property
    def dims(self) -> tuple[int, int]:
        return self.sxx.shape[0], self.syy.shape[0]

    @classmethod
    def from_rows(cls, x: np.ndarray, y: np.ndarray) -> "PairStatistics":
        """The statistics of materialised rows (x[i] and y[i] the same unit)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows and y {y.shape[0]}: the rows must be the same units")
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        a, b = np.einsum("ij,ij->i", xc, xc), np.einsum("ij,ij->i", yc, yc)
        return cls(x.shape[0], xc.T @ xc, yc.T @ yc, xc.T @ yc, float(a @ a), float(b @ b), float(a @ b))

    @classmethod
    def from_pair(cls, pair, model_x: str, model_y: str) -> "PairStatistics":
        """The statistics of two models' target layers over every unit of a pair file (a PairMoments)."""
        merged = pair.all_units()
        if not merged.blocks:
            raise ValueError("the pair file holds no norm statistics (written before moments format 4)")
        cx, cy = pair.columns_of(model_x, "target"), pair.columns_of(model_y, "target")
        gx, gy = pair.block_of(model_x), pair.block_of(model_y)
        c, products = merged.comoment, merged.norm_products
        return cls(merged.n, c[cx, cx], c[cy, cy], c[cx, cy], float(products[gx, gx]), float(products[gy, gy]),
                   float(products[gx, gy]))
