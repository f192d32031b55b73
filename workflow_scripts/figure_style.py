"""The colours every figure shares: the Okabe–Ito palette, told apart with the common colour-vision deficiencies
(tab10's red/green pair is not). Past eight series the colours repeat, and `marker` changes with each round so
that a ninth model is still told from the first."""

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
POSITIVE = OKABE_ITO[0]  # blue: a positive correlation, a fit, a measured value
NEGATIVE = OKABE_ITO[5]  # vermillion: a negative correlation, a control
MARKERS = ("o", "s", "^", "D", "v")


def colour(index: int) -> str:
    """The colour of the index-th series."""
    return OKABE_ITO[index % len(OKABE_ITO)]


def marker(index: int) -> str:
    """The marker of the index-th series: a new one each time the colours start over."""
    return MARKERS[(index // len(OKABE_ITO)) % len(MARKERS)]
