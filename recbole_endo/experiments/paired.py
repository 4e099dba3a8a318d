"""Paired comparisons of two models over the same test users: the mean per-user difference of a
metric, its 95 % bootstrap confidence interval and the Wilcoxon signed-rank p-value (scipy).

A pair is one user on one seed's split, where both models have a value of the metric (users
matched by their raw id). Pairs of every seed are pooled: with three seeds a user counts three
times, once per split, so the interval is of the mean over users and seeds, not of the spread
between seeds (the summary's ± gives that).
"""

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def paired_values(entry_rows, reference_rows):
    """``(entry values, reference values)`` of the pairs: both arguments map ``(seed, user)`` to a
    value; pairs are the keys both hold, in sorted order."""
    keys = sorted(set(entry_rows) & set(reference_rows))
    return np.array([entry_rows[key] for key in keys], float), np.array([reference_rows[key] for key in keys], float)


def paired_difference(values, reference):
    """``{pairs, mean, ci_low, ci_high, p}`` of ``values − reference`` per pair: the mean
    difference, its percentile bootstrap interval (``BOOTSTRAP_RESAMPLES`` resamples of the pairs,
    seeded) and the two-sided Wilcoxon signed-rank p-value (zero differences dropped; 1.0 when
    every difference is zero). Fewer than two pairs: mean only, the rest None."""
    differences = np.asarray(values, float) - np.asarray(reference, float)
    result = {"pairs": len(differences), "mean": float(differences.mean()) if len(differences) else None,
              "ci_low": None, "ci_high": None, "p": None}
    if len(differences) < 2:
        return result
    if np.all(differences == differences[0]):  # no spread: the bootstrap interval is the point
        result["ci_low"] = result["ci_high"] = float(differences[0])
    else:
        interval = stats.bootstrap(
            (differences,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED), batch=1000,
        ).confidence_interval
        result["ci_low"], result["ci_high"] = float(interval.low), float(interval.high)
    result["p"] = 1.0 if not differences.any() else float(stats.wilcoxon(differences).pvalue)
    return result


def paired_table(per_user, reference, entries, metrics):
    """``{entry: {metric: paired_difference}}`` of each entry but ``reference`` against it;
    ``per_user`` maps ``(entry, metric)`` to ``{(seed, user): value}``."""
    table = {}
    for entry in entries:
        if entry == reference:
            continue
        table[entry] = {}
        for metric in metrics:
            values, base = paired_values(per_user.get((entry, metric), {}), per_user.get((reference, metric), {}))
            table[entry][metric] = paired_difference(values, base)
    return table


def format_difference(cell, p_value=True):
    """``+0.0123 [+0.0050, +0.0190]* p 0.002`` (the ``*`` when the interval excludes 0; the p-value
    unless ``p_value`` is false); "—" without pairs."""
    if cell["mean"] is None:
        return "—"
    if cell["ci_low"] is None:
        return f"{cell['mean']:+.4f}"
    excludes_zero = cell["ci_low"] > 0 or cell["ci_high"] < 0
    interval = f"{cell['mean']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]{'*' if excludes_zero else ''}"
    return f"{interval} p {cell['p']:.3g}" if p_value else interval
