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
  uniformly exposed sample of ratings (Schnabel et al.'s Yahoo! R3 propensities). ``propensity:
  naive_bayes`` takes P(r | O=1) and P(O=1) = N / (U I) from the N training ratings and P(r) from
  the dataset's uniform slice, ``<dataset>.uniform.inter`` beside its splits, which the Coat and
  Yahoo! R3 converters write with ``--uniform_slice SHARE`` (a share of the random test ratings,
  then left out of the test: :mod:`recbole_endo.data.uniform_slice`); each pair is weighed by the
  propensity of its rating.
- :func:`read_propensity_file`: a dataset's own users x items matrix (Coat's propensities.ascii),
  read by raw id.

:func:`check_propensity_options` checks the options ``propensity``, ``propensity_clip`` and
``propensity_file`` (and that naive_bayes's slice exists) from the config alone;
:func:`propensity_from_config` reads them and returns a :class:`Propensity` lookup.
"""

import os

import numpy as np
import torch
from torch import nn

from recbole_endo.data.uniform_slice import UNIFORM_PART, uniform_slice_path
from recbole_endo.files import read_atomic_file
from recbole_endo.model.mf import rating_field
from recbole_endo.options import check_raw_ratings, choice_option, number_option

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


def atomic_columns(path, config, names):
    """Columns ``names`` of a RecBole atomic file (:func:`~recbole_endo.files.read_atomic_file`), as
    strings; a missing column or an empty cell in one is a ValueError naming the file (and line)."""
    _, frame = read_atomic_file(path, config)
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column '{missing[0]}' in the header {list(frame.columns)}")
    empty = frame[names].isna().any(axis=1)
    if empty.any():
        raise ValueError(f"{path}, line {int(empty.to_numpy().argmax()) + 2}: a cell of {names} is empty")
    return frame[names]


def read_uniform_slice(config):
    """The ratings of the dataset's uniform slice (``<data_path>/<dataset>.uniform.inter``), after
    checking that none of its pairs is in the test split (the last of ``benchmark_filename``)."""
    path = uniform_slice_path(config["data_path"], config["dataset"])
    uid, iid, rating = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["RATING_FIELD"]
    frame = atomic_columns(path, config, [uid, iid, rating])
    try:
        ratings = frame[rating].to_numpy(dtype=float)
    except ValueError as error:
        raise ValueError(f"{path}: the ratings ('{rating}') must be numbers: {error}") from None
    parts = config["benchmark_filename"]
    if parts:
        test_path = os.path.join(config["data_path"], f"{config['dataset']}.{parts[-1]}.inter")
        if os.path.isfile(test_path):
            test = atomic_columns(test_path, config, [uid, iid])
            leaked = set(zip(frame[uid], frame[iid])) & set(zip(test[uid], test[iid]))
            if leaked:
                user, item = min(leaked)
                raise ValueError(
                    f"{path} shares {len(leaked)} pairs (user {user}, item {item}, ...) with the test split "
                    f"{test_path}: the slice that estimates P(r) must be left out of the test (the "
                    "converters' --uniform_slice writes both files)"
                )
    return ratings


class Propensity(nn.Module):
    """P(O_ui = 1) of a batch of pairs, clipped from below at ``clip`` (max(p, clip)).

    ``table`` holds one propensity per item (popularity), per user and item (a file), or, with
    ``rating_values`` (sorted), one per rating value (naive Bayes: ``table[k]`` is the propensity of
    rating ``rating_values[k]``; the batch's ratings must be passed, and each must be one of the
    values). The tables are buffers left out of checkpoints: a reloaded model derives them again
    from its training split, options and files, as the model it was saved from did.
    """

    def __init__(self, table, clip=0.0, rating_values=None):
        super().__init__()
        self.clip = clip
        self.by_rating = rating_values is not None
        self.register_buffer("table", torch.as_tensor(table).float().clamp(min=clip), persistent=False)
        if self.by_rating:
            self.register_buffer("rating_values", torch.as_tensor(rating_values).float(), persistent=False)

    def forward(self, user, item, rating=None):
        if self.by_rating:
            if rating is None:
                raise ValueError("naive Bayes propensities are looked up by the pairs' ratings: pass them")
            rating = rating.float()
            index = torch.searchsorted(self.rating_values, rating).clamp(max=len(self.rating_values) - 1)
            if not torch.equal(self.rating_values[index], rating):
                unknown = rating[self.rating_values[index] != rating][0].item()
                raise ValueError(
                    f"rating {unknown:g} has no naive Bayes propensity: the training ratings have the values "
                    f"{self.rating_values.tolist()}"
                )
            return self.table[index]
        return self.table[user, item] if self.table.dim() == 2 else self.table[item]


def check_propensity_options(config, model_name):
    """Fail with a ValueError naming the option (and ``model_name``) on a bad propensity option.

    It needs only the config (``propensity_file`` and the uniform slice are read with the dataset,
    by :func:`propensity_from_config`), so runs check it before loading any data: naive_bayes's
    slice file must exist, and the ratings it is looked up by must be raw."""
    kind = choice_option(config, "propensity", PROPENSITIES)
    number_option(config, "propensity_clip", 0, 1)
    if kind == "naive_bayes":
        path = uniform_slice_path(config["data_path"], config["dataset"])
        if not os.path.isfile(path):
            raise ValueError(
                f"config option 'propensity' naive_bayes ({model_name}) estimates P(r) on the dataset's "
                f"uniformly exposed slice {path}, which does not exist: the Coat and Yahoo! R3 converters "
                "write it with --uniform_slice SHARE (python -m recbole_endo.data.coat RAW_DIR DATA_PATH "
                "--uniform_slice 0.05; the test then leaves the slice out), or use propensity popularity, or "
                "file with 'propensity_file'"
            )
        check_raw_ratings(config, "propensity")
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

    naive_bayes: :func:`naive_bayes_propensity` of the training split's ratings (``dataset``'s,
    ``RATING_FIELD``) and the uniform slice's (:func:`read_uniform_slice`), with n_pairs = users x
    items (RecBole's ids but the padding), one propensity per training rating value.

    Args:
        popularity (callable): returns the per-item propensities of ``popularity`` (the model's
            estimator: :func:`observed_share_propensity` or :func:`relative_popularity_propensity`).
    """
    clip = config["propensity_clip"]
    if config["propensity"] == "file":
        tokens = dataset.field2id_token
        table = read_propensity_file(config["propensity_file"], tokens[dataset.uid_field], tokens[dataset.iid_field])
        return Propensity(table, clip)
    if config["propensity"] == "naive_bayes":
        field = rating_field(config, dataset, f"{config['model']} with propensity naive_bayes")
        observed = dataset.inter_feat[field].numpy()
        uniform = read_uniform_slice(config)
        try:
            table = naive_bayes_propensity(observed, uniform, (dataset.user_num - 1) * (dataset.item_num - 1))
        except ValueError as error:
            path = uniform_slice_path(config["data_path"], config["dataset"])
            raise ValueError(f"propensity naive_bayes with the {UNIFORM_PART} slice {path}: {error}") from None
        values = sorted(table)
        return Propensity([table[value] for value in values], clip, rating_values=values)
    return Propensity(popularity(), clip)
