"""The synthetic dataset ``endo-synth``: RecBole benchmark files whose true preferences are known.

It serves tests (tiny sizes), debiasing checks (the truth and the exposure are written beside the
data) and scale (millions of interactions in seconds: every step is vectorised with numpy). One
``np.random.default_rng(seed)`` draws everything, so the options fix the files.

The model, with ``d = LATENT_DIM`` and ``a = atom_share``:

- **Side features.** Each user has a token ``user_group`` (``user_groups`` values), each item a
  token ``item_category`` (``item_categories`` values), spread evenly and at random. Every group,
  every category, every user and every item (its *atom* part) has a latent vector in R^d.
- **True preference.** The logit ``l(u, i) = PREFERENCE_SCALE * (sqrt(1 - a) * side + sqrt(a) *
  atom)``, where ``side`` = group vector · category vector and ``atom`` = user vector · item
  vector, each scaled to unit standard deviation over user-item pairs: ``atom_share`` is the share
  of the logit's variance that only the ids can explain.
- **Rating.** 1-5 by the quantiles ``RATING_QUANTILES`` of ``l`` over all user-item pairs (a
  random sample of ``REFERENCE_PAIRS`` when there are more): over all pairs 25 % are rated >= 4.
- **Exposure.** Item ``i`` is shown with propensity ``pi_i ∝ rank_i ** -skew`` (Zipf; 0 = uniform),
  its rank a random permutation of the items: popularity is independent of preference.
- **Observed (self-selected) interactions**, ``interactions`` in all, train and validation. Each
  user gets one plus a uniform multinomial share, at most ``items - test_items_per_user - 1``
  (RecBole needs an item in no split to sample negatives from). They are what a stream of
  exposures gives: an exposure shows item ``i`` with probability ``pi_i``, the user keeps it with
  probability ``sigmoid(l(u, i))``, repeats are ignored. That is successive sampling without
  replacement with weights ``pi_i * sigmoid(l(u, i))``; it is drawn by simulating the stream while
  that is cheap, and by Gumbel top-k over the user's whole row (the same distribution) for a user
  who would need more exposures than there are items.
- **Validation**: a seeded per-user hold-out of ``valid_share`` of the observed interactions (at
  least one per user with two or more, never the last one), as :mod:`recbole_endo.data.coat` splits Coat.
- **Test**, uniformly exposed: per user ``test_items_per_user`` items drawn uniformly among the
  items the user has not interacted with, every one written with its rating (low ones too), as
  Coat's randomly exposed test set is. Users have kept what they like, so the unseen items are
  liked a little less than average: the test's rating shares fall below the quantiles' as the
  data get denser.

Files in ``<out_dir>/<name>/``: ``<name>.{train,valid,test}.inter`` (user_id, item_id, rating),
``<name>.user`` (user_id, user_group), ``<name>.item`` (item_id, item_category),
``<name>.truth.npz`` (see :func:`load_truth`, :func:`true_logit`) and ``<name>.options.json``
(the options, so that :func:`prepare_dataset` regenerates the folder when they change). Ids are
``1..users`` and ``1..items``: id ``k`` is row ``k - 1`` of the truth arrays.

    python -m recbole_endo.data.synth OUT_DIR [--interactions 1000000] [--skew 1.0] [--seed 2020] ...
"""

import argparse
import json
import os
import sys
import time
from logging import getLogger

import numpy as np

from recbole_endo.files import dataset_folder, write_atomic_file
from recbole_endo.options import number_option

SYNTH_DATASET = "endo-synth"
SPLIT_PARTS = ("train", "valid", "test")  # its benchmark_filename
DEFAULT_OPTIONS = {
    "users": 2000,
    "items": 1000,
    "interactions": 100000,
    "skew": 1.0,
    "atom_share": 0.5,
    "test_items_per_user": 16,
    "user_groups": 8,
    "item_categories": 16,
    "valid_share": 0.1,
    "seed": 2020,
}
# The Config key of each option (recbole_endo/properties/dataset/endo-synth.yaml); errors name these.
CONFIG_KEYS = {name: f"synth_{name}" for name in DEFAULT_OPTIONS} | {"test_items_per_user": "synth_test_items"}
# Bumped whenever the same options would give other files, so that stale folders are regenerated.
GENERATOR_VERSION = 1
LATENT_DIM = 8
PREFERENCE_SCALE = 2.0  # logit std 2: keeping probabilities spread over (0.02, 0.98) for most pairs
RATING_QUANTILES = (0.4, 0.6, 0.75, 0.9)  # over all pairs, ratings 1..5 in shares 40/20/15/15/10 %
REFERENCE_PAIRS = 200_000
DENSE_CHUNK = 2_000_000  # entries of one block of whole user rows in the Gumbel top-k draw
MAX_SKEW = 10  # rank ** -10 is still a positive float for a billion items
STREAM_MARGIN = 1.25  # extra exposures drawn per round, so that most users finish in one
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float"]


def check_options(options):
    """``DEFAULT_OPTIONS`` updated by ``options``, checked; errors name the Config key (synth_...)."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown endo-synth option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
    options = DEFAULT_OPTIONS | options
    values = {CONFIG_KEYS[name]: value for name, value in options.items()}
    users = number_option(values, "synth_users", low=1, integer=True)
    items = number_option(values, "synth_items", low=3, integer=True)
    number_option(values, "synth_test_items", low=1, high=items - 2, integer=True)
    number_option(values, "synth_interactions", low=users, high=users * max_observed(options), integer=True)
    number_option(values, "synth_skew", low=0, high=MAX_SKEW)
    number_option(values, "synth_atom_share", low=0, high=1)
    groups = number_option(values, "synth_user_groups", low=1, high=users, integer=True)
    categories = number_option(values, "synth_item_categories", low=1, high=items, integer=True)
    valid_share = number_option(values, "synth_valid_share", low=0, high=1, low_open=True)
    if valid_share == 1:  # number_option has no open upper bound
        raise ValueError("config option 'synth_valid_share' must be below 1: every user keeps a training interaction")
    number_option(values, "synth_seed", low=0, integer=True)
    if groups * categories == 1 and options["atom_share"] < 1:
        raise ValueError(
            "config options 'synth_user_groups' and 'synth_item_categories' are both 1: the side part of "
            "the preference would be constant; raise one, or set 'synth_atom_share' to 1"
        )
    return options


def true_logit(truth, users, items):
    """The true preference logit of (user, item) index pairs (0-based; numpy broadcasting applies)."""
    side_table = (truth["group_vectors"] @ truth["category_vectors"].T).ravel()
    side = side_table[truth["user_group"][users] * len(truth["category_vectors"]) + truth["item_category"][items]]
    # np.take gathers rows faster than fancy indexing; this is most of the generator's arithmetic.
    user_atom, item_atom = np.take(truth["user_atom"], users, axis=0), np.take(truth["item_atom"], items, axis=0)
    atom = np.einsum("...d,...d->...", user_atom, item_atom)
    return truth["side_weight"] * side + truth["atom_weight"] * atom


def true_rating(truth, users, items):
    """The rating 1-5 that the true preference of each (user, item) index pair gives."""
    return 1 + np.searchsorted(truth["rating_thresholds"], true_logit(truth, users, items), side="right")


def truth_file(folder, dataset_name=SYNTH_DATASET):
    """Where a generated dataset's truth arrays lie in its ``folder``."""
    return os.path.join(folder, f"{dataset_name}.truth.npz")


def load_truth(folder, dataset_name=SYNTH_DATASET):
    """The truth arrays written with a generated dataset, as a dict.

    ``user_group``, ``item_category`` (index per user/item), ``group_vectors``,
    ``category_vectors``, ``user_atom``, ``item_atom`` (latent vectors), ``side_weight``,
    ``atom_weight`` (the logit's coefficients), ``rating_thresholds`` (logit cut points of the
    ratings 2..5) and ``item_exposure`` (the exposure propensity ``pi`` of each item, summing to 1).
    """
    with np.load(truth_file(folder, dataset_name)) as arrays:
        return dict(arrays)


def draw_truth(rng, options):
    """Side tokens, latent vectors, logit weights, rating cuts and exposure of one dataset."""
    users, items = options["users"], options["items"]
    groups, categories = options["user_groups"], options["item_categories"]
    # Entries with std d^-1/4 make each dot product's variance about 1 before it is standardised.
    vector_std = LATENT_DIM**-0.25
    truth = {
        "user_group": rng.permutation(np.arange(users) % groups),
        "item_category": rng.permutation(np.arange(items) % categories),
        "group_vectors": rng.normal(0, vector_std, (groups, LATENT_DIM)),
        "category_vectors": rng.normal(0, vector_std, (categories, LATENT_DIM)),
        "user_atom": rng.normal(0, vector_std, (users, LATENT_DIM)),
        "item_atom": rng.normal(0, vector_std, (items, LATENT_DIM)),
    }
    if users * items <= REFERENCE_PAIRS:
        pair_users, pair_items = np.divmod(np.arange(users * items), items)
    else:
        pair_users, pair_items = rng.integers(users, size=REFERENCE_PAIRS), rng.integers(items, size=REFERENCE_PAIRS)
    share = options["atom_share"]

    def unit_weight(part):
        """The weight that gives ``part`` (side or atom) unit std over the reference pairs."""
        alone = truth | {"side_weight": float(part == "side"), "atom_weight": float(part == "atom")}
        return 1 / true_logit(alone, pair_users, pair_items).std()

    # A part without share keeps weight 0 (the side part may then be constant: one group, one category).
    truth["side_weight"] = PREFERENCE_SCALE * np.sqrt(1 - share) * unit_weight("side") if share < 1 else 0.0
    truth["atom_weight"] = PREFERENCE_SCALE * np.sqrt(share) * unit_weight("atom") if share > 0 else 0.0
    truth["rating_thresholds"] = np.quantile(true_logit(truth, pair_users, pair_items), RATING_QUANTILES)
    rank = rng.permutation(items) + 1.0  # 1 = the most exposed item
    propensity = rank ** -options["skew"]
    truth["item_exposure"] = propensity / propensity.sum()
    return truth


def max_observed(options):
    """Observed interactions a user may have: the test items must be unseen, and RecBole needs one
    item that the user has in no split, to sample negatives from."""
    return options["items"] - options["test_items_per_user"] - 1


def observed_counts(rng, options):
    """Observed interactions per user: one each plus a uniform multinomial share of the rest, at
    most :func:`max_observed`."""
    users = options["users"]
    cap = max_observed(options)
    counts = 1 + rng.multinomial(options["interactions"] - users, np.full(users, 1 / users))
    while (excess := np.maximum(counts - cap, 0).sum()) > 0:
        counts = np.minimum(counts, cap)
        room = cap - counts
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def sample_new_items(rng, counts, taken, n_items, exposure=None, log_keep=None):
    """For every user ``u``, ``counts[u]`` items it has not yet (``taken``: sorted pair keys
    ``user * n_items + item``), by successive sampling without replacement with weights
    ``exposure[i] * exp(log_keep(u, i))`` (uniform and 1 when None). Returns the new pair keys.

    The stream of exposures (draw ``i`` by ``exposure``, keep it with ``exp(log_keep)``, skip repeats)
    is simulated while it is cheap; once a user would need as many draws as there are items, its
    remaining items come from Gumbel top-k over its whole row, which has the same distribution.
    """
    need = counts.astype(np.int64)
    draws_made, items_found = np.zeros_like(need), np.zeros_like(need)
    new_keys = []
    while (pending := np.flatnonzero(need)).size:
        # Draws expected for the rest, from each user's yield so far (prior 1/2), with a margin.
        draws = np.ceil(STREAM_MARGIN * need[pending] * (draws_made[pending] + 2) / (items_found[pending] + 1))
        draws = draws.astype(np.int64)
        dense = draws >= n_items
        from_rows = gumbel_top_k(rng, pending[dense], need[pending[dense]], taken, n_items, exposure, log_keep)
        need[pending[dense]] = 0
        streamed = pending[~dense]
        users = np.repeat(streamed, draws[~dense])
        items = rng.choice(n_items, size=users.size, p=exposure)
        if log_keep is not None:
            kept = rng.random(users.size) < np.exp(log_keep(users, items))
            users, items = users[kept], items[kept]
        keys = users * n_items + items
        keys = keys[~np.isin(keys, taken)]
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # each pair once, in draw order, users still in ascending blocks
        owners = keys // n_items
        draws_made[streamed] += draws[~dense]
        items_found += np.bincount(owners, minlength=need.size)
        rank_in_user = np.arange(keys.size) - np.searchsorted(owners, owners)
        from_stream = keys[rank_in_user < need[owners]]
        need -= np.bincount(from_stream // n_items, minlength=need.size)
        new_keys += [from_rows, from_stream]
        taken = np.union1d(taken, np.concatenate([from_rows, from_stream]))
    return np.sort(np.concatenate(new_keys))


def gumbel_top_k(rng, users, counts, taken, n_items, exposure, log_keep):
    """``counts[j]`` new items of ``users[j]``: the top of log-weight + Gumbel noise over its row."""
    new_keys = []
    all_items = np.arange(n_items)
    block = max(1, DENSE_CHUNK // n_items)
    for start in range(0, users.size, block):
        block_users, block_counts = users[start : start + block], counts[start : start + block]
        scores = rng.gumbel(size=(block_users.size, n_items))
        if exposure is not None:
            scores += np.log(exposure)
        if log_keep is not None:
            scores += log_keep(block_users[:, None], all_items[None, :])
        keys = block_users[:, None] * n_items + all_items[None, :]
        scores[np.isin(keys, taken)] = -np.inf
        order = np.argsort(-scores, axis=1)
        chosen = order[all_items[None, :] < block_counts[:, None]]  # row by row, its first counts[j]
        new_keys.append(np.repeat(block_users, block_counts) * n_items + chosen)
    return np.concatenate(new_keys) if new_keys else np.zeros(0, np.int64)


def validation_mask(rng, owners, counts, valid_share):
    """Per user, a random ``valid_share`` of its interactions (at least one if it has two or more,
    never all): the seeded hold-out of :func:`recbole_endo.data.coat.split_train`."""
    valid_counts = np.where(counts >= 2, np.minimum(counts - 1, np.maximum(1, np.round(valid_share * counts))), 0)
    order = np.lexsort((rng.random(owners.size), owners))
    sorted_owners = owners[order]
    rank_in_user = np.arange(owners.size) - np.searchsorted(sorted_owners, sorted_owners)
    mask = np.zeros(owners.size, dtype=bool)
    mask[order] = rank_in_user < valid_counts[sorted_owners]
    return mask


def write_interactions(path, keys, n_items, truth):
    """Pair keys as an .inter file with 1-based ids and each pair's true rating."""
    users, items = np.divmod(keys, n_items)
    ratings = true_rating(truth, users, items)
    write_atomic_file(path, INTER_HEADER, zip((users + 1).tolist(), (items + 1).tolist(), ratings.tolist()))


def generate_synth(out_dir, dataset_name=SYNTH_DATASET, **options):
    """Write ``out_dir/dataset_name/`` (see the module docstring); return its path.

    Options (defaults in ``DEFAULT_OPTIONS``): ``users``, ``items``, ``interactions`` (observed,
    train + valid), ``skew`` (Zipf exponent of the exposure), ``atom_share`` (share of the
    preference's variance in the atom part), ``test_items_per_user``, ``user_groups``,
    ``item_categories``, ``valid_share``, ``seed``. The folder is written under a temporary name
    and renamed into place, so an error leaves ``out_dir`` as it was.
    """
    options = check_options(options)
    rng = np.random.default_rng(options["seed"])
    truth = draw_truth(rng, options)
    n_users, n_items = options["users"], options["items"]
    counts = observed_counts(rng, options)
    observed = sample_new_items(
        rng,
        counts,
        np.zeros(0, np.int64),
        n_items,
        exposure=truth["item_exposure"],
        log_keep=lambda users, items: -np.logaddexp(0, -true_logit(truth, users, items)),
    )
    valid = validation_mask(rng, observed // n_items, counts, options["valid_share"])
    test = sample_new_items(rng, np.full(n_users, options["test_items_per_user"]), observed, n_items)

    target = os.path.join(out_dir, dataset_name)
    with dataset_folder(target) as work:
        prefix = os.path.join(work, dataset_name)
        for part, keys in zip(SPLIT_PARTS, (observed[~valid], observed[valid], test)):
            write_interactions(f"{prefix}.{part}.inter", keys, n_items, truth)
        write_atomic_file(
            f"{prefix}.user",
            ["user_id:token", "user_group:token"],
            zip(range(1, n_users + 1), (f"g{group + 1}" for group in truth["user_group"])),
        )
        write_atomic_file(
            f"{prefix}.item",
            ["item_id:token", "item_category:token"],
            zip(range(1, n_items + 1), (f"c{category + 1}" for category in truth["item_category"])),
        )
        np.savez(truth_file(work, dataset_name), **truth)
        with open(f"{prefix}.options.json", "w") as f:
            json.dump(options_record(options), f, indent=1)
    return target


def options_record(options):
    """What ``<name>.options.json`` holds: the complete options and the generator's version."""
    return {"generator_version": GENERATOR_VERSION, **options}


def is_up_to_date(folder, dataset_name, options):
    """Whether ``folder`` holds every file of ``dataset_name`` generated with ``options``."""
    parts = (*(f"{part}.inter" for part in SPLIT_PARTS), "user", "item", "truth.npz")
    if not all(os.path.isfile(os.path.join(folder, f"{dataset_name}.{part}")) for part in parts):
        return False
    try:
        with open(os.path.join(folder, f"{dataset_name}.options.json")) as f:
            return json.load(f) == options_record(options)
    except (OSError, ValueError):
        return False


def prepare_dataset(config):
    """Generate ``endo-synth`` into ``config["data_path"]`` from the ``synth_*`` options when it is
    missing or was generated with other options; endo-synth read through other benchmark files (a
    split made from it, such as a cold-start split) is left alone. A run calls it for endo-synth
    only (:data:`recbole_endo.data.preparers.DATASET_PREPARERS`).

    RecBole has already joined ``data_path`` and the dataset name, so the folder is the data path.
    """
    if config["benchmark_filename"] != list(SPLIT_PARTS):
        return
    options = check_options({name: config[key] for name, key in CONFIG_KEYS.items() if config[key] is not None})
    folder = os.path.normpath(config["data_path"])
    if is_up_to_date(folder, SYNTH_DATASET, options):
        return
    start = time.perf_counter()
    try:
        generate_synth(os.path.dirname(folder), SYNTH_DATASET, **options)
    except OSError:
        # Parallel runs (compare --jobs) may generate the same folder at once: the first rename
        # wins and the others fail on the existing folder, which then holds the same files.
        if not is_up_to_date(folder, SYNTH_DATASET, options):
            raise
    getLogger().info(f"generated {SYNTH_DATASET} in {folder} ({time.perf_counter() - start:.1f} s): {options}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the endo-synth dataset as RecBole atomic (benchmark) files.")
    parser.add_argument("out_dir", help="RecBole data_path; the dataset folder is written inside it")
    parser.add_argument("--name", default=SYNTH_DATASET, help="dataset name (folder and file prefix)")
    for name, default in DEFAULT_OPTIONS.items():
        flag = "test_items" if name == "test_items_per_user" else name
        parser.add_argument(f"--{flag}", dest=name, type=type(default), help=f"default {default}")
    args = vars(parser.parse_args(argv))
    out_dir, name = args.pop("out_dir"), args.pop("name")
    try:
        print(generate_synth(out_dir, name, **{key: value for key, value in args.items() if value is not None}))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
