"""The uniformly exposed slice the converters of Coat and Yahoo! R3 can take out of the random test.

Naive Bayes propensities (Schnabel et al., ICML 2016, § 5; ``propensity: naive_bayes``,
:mod:`recbole_endo.model.propensity`) need P(r), the rating distribution under uniform exposure,
and the only uniformly exposed ratings of these datasets are the random test ones. The
doubly-robust literature's protocol (the public StableDR / CDR code on Coat and Yahoo! R3:
``ips_idxs = shuffle(range(len(y_test))); y_ips = y_test[ips_idxs[:int(0.05 * len)]]``) estimates
P(r) from 5 % of them; to keep the test free of what trained the model, ``--uniform_slice SHARE``
writes that share to ``<name>.uniform.inter`` (the columns of the other ``.inter`` files) and
leaves it out of ``<name>.test.inter``.

The slice is drawn per rating, as that code draws it: ``round(SHARE * n)`` (at least one) of the
n random ratings, without replacement, uniformly, by a generator of its own seeded with the
converter's ``--seed`` (the train/valid hold-out is the one the converter writes without the
slice). A user may lose some of their random items to it, rarely all. ``uniform`` is no split
RecBole loads: the datasets' ``benchmark_filename`` lists ``train, valid, test``, and RecBole reads
``<name>.<part>.inter`` for those parts only.
"""

import os

import numpy as np

UNIFORM_PART = "uniform"
# Mixed into the converter's seed, so the slice's draws are not the hold-out's draws.
_STREAM = 34


def uniform_slice_path(dataset_path, dataset_name):
    """``<dataset_path>/<dataset_name>.uniform.inter``: RecBole's ``data_path`` (the dataset's folder) and ``dataset``."""
    return os.path.join(dataset_path, f"{dataset_name}.{UNIFORM_PART}.inter")


def held_out_slice(config):
    """``(path, ratings)`` of the uniform slice beside a benchmark dataset's splits (``config``'s
    ``data_path`` and ``dataset``), or None: what a table's provenance names, as its test lacks them."""
    path = uniform_slice_path(config["data_path"], config["dataset"])
    if not config["benchmark_filename"] or not os.path.isfile(path):
        return None
    with open(path) as f:
        return path, sum(1 for line in f if line.strip()) - 1


def check_uniform_share(share):
    """A ValueError unless ``share`` is a number in [0, 1)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ValueError(f"uniform_slice must be a share in [0, 1), got {share!r}")


def uniform_slice_mask(count, share, seed):
    """Which of ``count`` random ratings (in the order written) go to the uniform slice: a bool
    array with ``max(1, round(share * count))`` True entries drawn uniformly without replacement
    (none for ``share`` 0). A slice that would take every rating leaves no test: a ValueError."""
    check_uniform_share(share)
    mask = np.zeros(count, dtype=bool)
    if share == 0:
        return mask
    size = max(1, round(share * count))
    if size >= count:
        raise ValueError(
            f"uniform_slice {share} takes {size} of the {count} random test ratings and leaves no test: "
            "give a smaller share"
        )
    mask[np.random.default_rng([seed, _STREAM]).choice(count, size=size, replace=False)] = True
    return mask
