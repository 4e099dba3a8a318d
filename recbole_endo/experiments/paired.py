"""Paired comparisons of two models over the same test users: the mean per-user difference of a
metric, its 95 % bootstrap confidence interval and the Wilcoxon signed-rank p-value (scipy); and
the same difference seed by seed, with a Student-t interval over the seeds.

A pair is one user on one seed's split, where both models have a value of the metric (users
matched by their raw id). A user id names the same person on every seed's split, whether the
seeds share one split (Coat's file) or each draws its own (ml-100k's random split), so a user's
pairs are not independent draws: two deterministic models give the same difference on every seed
of a fixed split, and pooling the pairs would count that user once per seed and narrow the
interval and the p-value by copies alone. So each user's differences are first averaged over the
seeds whose splits have the user, and the bootstrap and the Wilcoxon test run over those per-user
means: each person counts once, and a user on fewer seeds' splits is still one unit (a cluster
bootstrap of the pairs would weigh users by their number of seeds). That interval covers the
users, not the randomness of training (initial weights, dropout, where early stopping lands),
which moves a model's whole result on a seed at once: the seed interval treats each seed's mean
difference as one draw, so it covers both, with as many draws as seeds.
"""

import csv
import gzip
import io
import os

import numpy as np
from scipy import stats

from recbole_endo.files import open_replacing

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def paired_values(entry_rows, reference_rows):
    """``(entry values, reference values, seeds, users)`` of the pairs: both arguments map
    ``(seed, user)`` to a value; pairs are the keys both hold, in sorted order; ``seeds`` and
    ``users`` hold each pair's seed and user."""
    keys = sorted(set(entry_rows) & set(reference_rows))
    return (
        np.array([entry_rows[key] for key in keys], float),
        np.array([reference_rows[key] for key in keys], float),
        [seed for seed, _ in keys],
        [user for _, user in keys],
    )


def user_means(differences, users):
    """Each user's mean of ``differences`` over its pairs (the seeds that have the user), in
    sorted order of user."""
    _, user_of_pair = np.unique(users, return_inverse=True)
    return np.bincount(user_of_pair, weights=differences) / np.bincount(user_of_pair)


def seed_differences(differences, seeds):
    """``{seed_means, seed_ci_low, seed_ci_high}``: the mean difference on each seed (in the order
    of ``seeds``' first appearance) and the two-sided Student-t ``CONFIDENCE`` interval of their
    mean, with ``seeds − 1`` degrees of freedom; the interval is None for fewer than two seeds,
    and the point itself (zero width) when every seed has the same mean, as two deterministic
    models on one split give."""
    seed_means = [float(differences[[s == seed for s in seeds]].mean()) for seed in dict.fromkeys(seeds)]
    result = {"seed_means": seed_means, "seed_ci_low": None, "seed_ci_high": None}
    if len(seed_means) < 2:
        return result
    if np.ptp(seed_means) == 0:
        result["seed_ci_low"] = result["seed_ci_high"] = seed_means[0]
    else:
        interval = stats.ttest_1samp(seed_means, 0).confidence_interval(CONFIDENCE)
        result["seed_ci_low"], result["seed_ci_high"] = float(interval.low), float(interval.high)
    return result


def paired_difference(values, reference, seeds=None, users=None):
    """``{pairs, mean, ci_low, ci_high, p}`` of ``values − reference`` per pair, with ``users``
    (each pair's user) first averaged per user (:func:`user_means`; without, each pair is its own
    user): the mean of the users' differences, its percentile bootstrap interval
    (``BOOTSTRAP_RESAMPLES`` resamples of the users, seeded) and the two-sided Wilcoxon
    signed-rank p-value over them (zero differences dropped; 1.0 when every difference is zero).
    Fewer than two users: mean only, the rest None. With ``seeds`` (each pair's seed), also
    :func:`seed_differences`."""
    differences = np.asarray(values, float) - np.asarray(reference, float)
    by_user = differences if users is None else user_means(differences, users)
    result = {"pairs": len(differences), "mean": float(by_user.mean()) if len(by_user) else None,
              "ci_low": None, "ci_high": None, "p": None}
    if seeds is not None:
        result |= seed_differences(differences, seeds)
    if len(by_user) < 2:
        return result
    if np.all(by_user == by_user[0]):  # no spread: the bootstrap interval is the point
        result["ci_low"] = result["ci_high"] = float(by_user[0])
    else:
        interval = stats.bootstrap(
            (by_user,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED), batch=1000,
        ).confidence_interval
        result["ci_low"], result["ci_high"] = float(interval.low), float(interval.high)
    result["p"] = 1.0 if not by_user.any() else float(stats.wilcoxon(by_user).pvalue)
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
            rows = per_user.get((entry, metric), {}), per_user.get((reference, metric), {})
            table[entry][metric] = paired_difference(*paired_values(*rows))  # values, reference, seeds, users
    return table


def excludes_zero(low, high):
    return low > 0 or high < 0


def format_difference(cell, p_value=True):
    """``+0.0123 [+0.0050, +0.0190]* p 0.002; seeds [+0.0010, +0.0250]†``: the bootstrap interval
    (``*`` when it excludes 0), the p-value unless ``p_value`` is false, and the seed interval
    when there is one (``†`` when it excludes 0); "—" without pairs. A seed interval of zero
    width (every seed the same mean difference, as of two deterministic models on one split) is
    followed by "zero width" and never marked: seeds that cannot differ are no evidence that
    training's randomness leaves the gap standing."""
    if cell["mean"] is None:
        return "—"
    if cell["ci_low"] is None:
        return f"{cell['mean']:+.4f}"
    text = f"{cell['mean']:+.4f} [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]{'*' if excludes_zero(cell['ci_low'], cell['ci_high']) else ''}"
    if p_value:
        text += f" p {cell['p']:.3g}"
    if cell.get("seed_ci_low") is not None:
        low, high = cell["seed_ci_low"], cell["seed_ci_high"]
        mark = " zero width" if low == high else "†" if excludes_zero(low, high) else ""
        text += f"; seeds [{low:+.4f}, {high:+.4f}]{mark}"
    return text


def write_per_user(path, per_user):
    """``per_user.csv.gz``: one row per entry, seed, metric and user."""
    # No name (a temporary one) and mtime 0: the same values give the same bytes, so a
    # regenerated table shows no change.
    with open_replacing(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed:
        file = io.TextIOWrapper(packed, newline="")
        writer = csv.writer(file)
        writer.writerow(["entry", "seed", "metric", "user", "value"])
        for (entry, metric), rows in per_user.items():
            writer.writerows([entry, seed, metric, user, value] for (seed, user), value in rows.items())
        file.flush()
        file.detach()  # the GzipFile closes itself, and the temporary file is open_replacing's


def ndcg_metrics(metrics):
    """The NDCG metrics (of every protocol) among ``metrics``: what the paired table and the plot show."""
    return [metric for metric in metrics if "ndcg" in metric]


def paired_markdown(table, reference):
    """The paired differences to ``reference`` of the NDCG metrics (every metric: paired.csv)."""
    metrics = ndcg_metrics(next(iter(table.values()), {}))
    header = ["model", *(f"Δ {metric}" for metric in metrics)]
    lines = [
        f"Paired difference to `{reference}`: mean over test users of each user's mean over the seeds "
        "[95 % bootstrap interval over users], Wilcoxon signed-rank p; * the interval excludes 0; "
        "seeds: the Student-t interval over the seeds' mean differences, † it excludes 0 (zero width: "
        "every seed the same, never marked).",
        "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
    ]
    for entry, cells in table.items():
        lines.append("| " + " | ".join([entry, *(format_difference(cells[metric]) for metric in metrics)]) + " |")
    return "\n".join(lines) + "\n"


def read_per_user(path):
    """``{(entry, metric): {(seed, user): value}}`` of a ``per_user.csv.gz`` (:func:`write_per_user`)."""
    per_user = {}
    with gzip.open(path, "rt", newline="") as file:
        for row in csv.DictReader(file):
            per_user.setdefault((row["entry"], row["metric"]), {})[(int(row["seed"]), row["user"])] = float(row["value"])
    return per_user


PAIRED_COLUMNS = {
    "pairs": "pairs", "mean": "mean difference", "ci_low": "ci low", "ci_high": "ci high", "p": "wilcoxon p",
    "seed_means": "seed differences", "seed_ci_low": "seed ci low", "seed_ci_high": "seed ci high",
}


def write_paired(output_dir, per_user, reference, entries):
    """``paired.csv`` of ``output_dir``: each of ``entries`` but ``reference`` against it, on every
    metric of ``per_user`` (:func:`paired_table`; a cell's seed differences space-separated).
    Returns the table."""
    metrics = list(dict.fromkeys(metric for _, metric in per_user))
    table = paired_table(per_user, reference, entries, metrics)
    with open_replacing(os.path.join(output_dir, "paired.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "reference", "metric", *PAIRED_COLUMNS.values()])
        for entry, cells in table.items():
            for metric, cell in cells.items():
                values = {**cell, "seed_means": " ".join(repr(mean) for mean in cell["seed_means"])}
                writer.writerow([entry, reference, metric, *(values[key] for key in PAIRED_COLUMNS)])
    return table


def read_paired(folder):
    """``(reference, {(entry, metric): cell})`` of a folder's ``paired.csv`` (:func:`write_paired`),
    or ``(None, {})`` without one."""
    path = os.path.join(folder, "paired.csv")
    if not os.path.isfile(path):
        return None, {}
    cells, reference = {}, None
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            reference = row["reference"]
            number = lambda column: None if row[column] == "" else float(row[column])  # noqa: E731
            cell = {key: number(column) for key, column in PAIRED_COLUMNS.items() if key != "seed_means"}
            cell["pairs"] = int(row["pairs"])
            cell["seed_means"] = [float(mean) for mean in row["seed differences"].split()]
            cells[(row["model"], row["metric"])] = cell
    return reference, cells
