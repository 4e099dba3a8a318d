"""Propensity estimators: P(O_ui = 1), the probability that the pair (u, i) is observed, as the
propensity-based debiasing models (MFIPS, MFDR, RelMF) weigh their losses by it.

References: Tobias Schnabel et al., "Recommendations as Treatments: Debiasing Learning and
Evaluation", ICML 2016, § 5 (naive Bayes on a uniformly exposed sample; Coat's own propensities);
Yuta Saito et al., "Unbiased Recommender Learning from Missing-Not-At-Random Implicit Feedback",
WSDM 2020, § 5 (item popularity, (n_i / max_j n_j) ** eta).

Estimators (functions of counts and ratings, so that they can be checked by hand):

- :func:`observed_share_propensity`: n_i / U, the share of users who rated item i: the maximum
  likelihood estimate of P(O_ui = 1) when exposure depends on the item only. It is a
  probability, so the IPS and DR sums over the whole matrix keep their normalisation
  (sum over the observed pairs of 1 / p_i = U * (items rated) ~ |D|): MFIPS's and MFDR's default.
- :func:`relative_popularity_propensity`: (n_i / max_j n_j) ** eta, Saito et al.'s, the most
  popular item 1: RelMF's default (eta 0.5, n_i its clicks). It is a relative scale, not a
  probability: a loss whose terms it weighs against unweighted ones (DR's) would be mis-scaled.
- :func:`naive_bayes_propensity`: P(O=1 | r) = P(r | O=1) P(O=1) / P(r), with P(r) from a
  uniformly exposed sample of ratings (Schnabel et al.'s Yahoo! R3 propensities).
- :func:`read_propensity_file`: a dataset's own users x items matrix (Coat's propensities.ascii),
  read by raw id.

:func:`check_propensity_options` checks the options ``propensity``, ``propensity_clip``,
``propensity_file`` and ``propensity_uniform_share`` from the config alone;
:func:`propensity_from_config` reads them and returns a :class:`Propensity` lookup.
"""

import os

import numpy as np
import torch
from torch import nn

from recbole_endo.model.options import choice_option, number_option

PROPENSITIES = ("popularity", "file", "naive_bayes")


def item_counts(items, n_items):
    """How often each item id in ``0 .. n_items - 1`` occurs in ``items``, as floats."""
    return torch.bincount(torch.as_tensor(items).long(), minlength=n_items).double()


def observed_share_propensity(counts, n_users):
    """p_i = n_i / U: the share of the ``n_users`` users who rated item i (``counts[i]`` = n_i)."""
    if n_users <= 0:
        raise ValueError(f"n_users must be positive, got {n_users}")
    return torch.as_tensor(counts).double() / n_users


def relative_popularity_propensity(counts, eta):
    """theta_i = (n_i / max_j n_j) ** eta (Saito et al. 2020); an item without count gets 0."""
    counts = torch.as_tensor(counts).double()
    if counts.max() <= 0:
        raise ValueError("relative popularity propensities need at least one counted item")
    return (counts / counts.max()) ** eta


def naive_bayes_propensity(observed, uniform, n_pairs):
    """Schnabel et al.'s naive Bayes propensities, one per rating value.

    P(O=1 | r) = P(r | O=1) P(O=1) / P(r): P(r | O=1) and P(O=1) = N / ``n_pairs`` from the
    ``observed`` ratings (N of them, self-selected), P(r) from the ``uniform`` ones (a sample of
    uniformly exposed pairs). This is c_O(r) * N_U / (n_pairs * c_U(r)) with c the counts.

    Returns:
        dict: rating value (float) -> propensity, for every value of ``observed``. A value that
        the uniform sample lacks has no estimate of P(r): a ValueError names it.
    """
    observed = np.asarray(observed, dtype=float)
    uniform = np.asarray(uniform, dtype=float)
    if not len(observed) or not len(uniform) or n_pairs < len(observed):
        raise ValueError(
            f"naive Bayes propensities need observed and uniform ratings and n_pairs >= the observed "
            f"ones, got {len(observed)} observed, {len(uniform)} uniform, n_pairs {n_pairs}"
        )
    propensities = {}
    for value in np.unique(observed):
        uniform_share = np.mean(uniform == value)
        if uniform_share == 0:
            raise ValueError(
                f"rating {value:g} occurs in the observed ratings but not in the uniform sample: "
                "P(r) has no estimate, so neither has its propensity"
            )
        observed_share = np.mean(observed == value)  # P(r | O=1)
        propensities[float(value)] = float(observed_share * (len(observed) / n_pairs) / uniform_share)
    return propensities


def _raw_index(token, size, what, path):
    """Row or column of ``token`` in the file: raw ids are the 1-based numbers Coat's converter writes."""
    try:
        number = int(token)
    except (TypeError, ValueError):
        number = 0
    if str(number) != str(token) or not 1 <= number <= size:
        raise ValueError(
            f"propensity_file {path}: {what} token {token!r} is not a raw id in 1..{size}; the file's "
            f"rows are users and its columns items, numbered from 1 by raw id (as "
            "python -m recbole_endo.data.coat writes Coat's ids)"
        )
    return number - 1


def read_propensity_file(path, user_tokens, item_tokens):
    """A users x items matrix of P(O_ui = 1) (whitespace-separated, row r = user token "r + 1",
    column c = item token "c + 1", as Coat's propensities.ascii), as a tensor indexed by the
    dataset's internal ids: ``user_tokens[k]`` is the token of internal id k (RecBole's
    ``field2id_token``); the padding id 0 (``[PAD]``) gets 1. Entries must lie in (0, 1]."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"propensity_file {path} does not exist")
    matrix = np.loadtxt(path, ndmin=2)
    if not np.all((matrix > 0) & (matrix <= 1)):
        row, column = np.argwhere(~((matrix > 0) & (matrix <= 1)))[0]
        raise ValueError(
            f"propensity_file {path}: entry at row {row + 1}, column {column + 1} is {matrix[row, column]!r}, "
            "propensities must lie in (0, 1]"
        )
    rows = [0] + [_raw_index(token, matrix.shape[0], "user", path) for token in user_tokens[1:]]
    columns = [0] + [_raw_index(token, matrix.shape[1], "item", path) for token in item_tokens[1:]]
    table = torch.as_tensor(matrix[np.ix_(rows, columns)], dtype=torch.float64)
    table[0, :] = 1.0
    table[:, 0] = 1.0
    return table


class Propensity(nn.Module):
    """P(O_ui = 1) of a batch of pairs, clipped from below at ``clip`` (max(p, clip)).

    ``table`` holds one propensity per item (popularity) or per user and item (a file). It is a
    buffer left out of checkpoints: a reloaded model derives it again from its training split and
    options, as the model it was saved from did.
    """

    def __init__(self, table, clip=0.0):
        super().__init__()
        self.clip = clip
        self.register_buffer("table", torch.as_tensor(table).float().clamp(min=clip), persistent=False)

    def forward(self, user, item):
        return self.table[user, item] if self.table.dim() == 2 else self.table[item]


def check_propensity_options(config, model_name):
    """Fail with a ValueError naming the option (and ``model_name``) on a bad propensity option.

    It needs only the config (``propensity_file`` is read with the dataset, by
    :func:`propensity_from_config`), so runs check it before loading any data. ``propensity``
    naive_bayes is refused until the protocols can hold its uniform sample out of the test."""
    kind = choice_option(config, "propensity", PROPENSITIES)
    number_option(config, "propensity_clip", 0, 1)
    if kind == "naive_bayes":
        share = number_option(config, "propensity_uniform_share", 0, 1, low_open=True)
        raise ValueError(
            f"config option 'propensity' naive_bayes is not available to {model_name} yet: it estimates "
            f"P(r) on a uniformly exposed sample, a share ({share}, 'propensity_uniform_share') of the "
            "test's random ratings, and the test must then leave that share out; the plugin's protocols "
            "cannot hold a slice of the test split out of evaluation, and reading the test's ratings "
            "while testing on them would leak the test. Use propensity popularity, or file with "
            "'propensity_file' (Coat ships propensities.ascii)"
        )
    if kind == "file":
        path = config["propensity_file"]
        if not isinstance(path, str) or not path:
            raise ValueError(
                f"config option 'propensity' file needs 'propensity_file', the users x items matrix of "
                f"P(O=1) by raw id (e.g. Coat's propensities.ascii), got {path!r}"
            )


def propensity_from_config(config, dataset, popularity):
    """The :class:`Propensity` of ``config``'s ``propensity`` options (checked by
    :func:`check_propensity_options`).

    Args:
        popularity (callable): returns the per-item propensities of ``popularity`` (the model's
            estimator: :func:`observed_share_propensity` or :func:`relative_popularity_propensity`).
    """
    clip = config["propensity_clip"]
    if config["propensity"] == "file":
        tokens = dataset.field2id_token
        table = read_propensity_file(config["propensity_file"], tokens[dataset.uid_field], tokens[dataset.iid_field])
        return Propensity(table, clip)
    return Propensity(popularity(), clip)
