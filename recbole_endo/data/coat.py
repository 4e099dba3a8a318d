"""Convert the raw Coat dataset (Schnabel et al., 2016) to RecBole atomic files.

Coat ships dense user x item matrices (0 = unobserved) and one-hot feature files whose columns are
named by ``group:value`` map files. RecBole wants one row per interaction and one token per
feature group, and its benchmark mode wants the split fixed on disk: train.ascii (self-selected
items) is split into train/valid per user, test.ascii (randomly exposed items) is the test set.
Ids are the raw 1-based row/column numbers, so results can be joined back to the raw files.
Item feature groups also used for users (gender) are written as item_<group>, see convert_coat.
``--uniform_slice SHARE`` (default 0: none) moves a seeded share of the random test ratings, drawn
per rating, to ``<name>.uniform.inter`` for ``propensity: naive_bayes``
(:mod:`recbole_endo.data.uniform_slice`); the test then lacks them.

    python -m recbole_endo.data.coat RAW_DIR OUT_DIR [--name coat] [--valid_share 0.1] [--seed 2020] [--uniform_slice 0]
"""

import argparse
import os
import sys

import numpy as np

from recbole_endo.data.uniform_slice import UNIFORM_PART, check_uniform_share, uniform_slice_mask
from recbole_endo.files import dataset_folder, write_atomic_file

FEATURES_DIR = "user_item_features"
RAW_FILES = {
    "train": "train.ascii",
    "test": "test.ascii",
    "user_features": os.path.join(FEATURES_DIR, "user_features.ascii"),
    "user_map": os.path.join(FEATURES_DIR, "user_features_map.txt"),
    "item_features": os.path.join(FEATURES_DIR, "item_features.ascii"),
    "item_map": os.path.join(FEATURES_DIR, "item_features_map.txt"),
}
MAX_RATING = 5


def read_lines(path):
    """The file's lines, trailing blank lines dropped (the raw files end with or without a newline)."""
    with open(path) as f:
        return f.read().rstrip().splitlines()


def read_matrix(path, max_value):
    """Integer matrix with entries in 0..max_value; errors give file and line, as the files are text."""
    rows = []
    for number, line in enumerate(read_lines(path), 1):
        try:
            row = [int(field) for field in line.split()]
        except ValueError:
            raise ValueError(f"{path}, line {number}: entries must be integers, got {line.strip()[:60]!r}") from None
        if rows and len(row) != len(rows[0]):
            raise ValueError(f"{path}, line {number}: {len(row)} entries, line 1 has {len(rows[0])}")
        bad = [value for value in row if not 0 <= value <= max_value]
        if bad:
            raise ValueError(f"{path}, line {number}: entry {bad[0]} outside 0..{max_value}")
        rows.append(row)
    if not rows or not rows[0]:
        raise ValueError(f"{path}: no entries")
    return np.array(rows)


def check_shape(path, matrix, n_rows, n_columns, what):
    """Rows and columns must line up with the other files, or ids would silently shift."""
    if len(matrix) != n_rows:
        raise ValueError(f"{path}, line {min(len(matrix), n_rows) + 1}: {len(matrix)} rows, expected {n_rows} ({what})")
    if matrix.shape[1] != n_columns:
        raise ValueError(f"{path}, line 1: {matrix.shape[1]} columns, expected {n_columns} ({what})")


def read_map(path):
    """(group, value) per feature column; spaces in values become "_" to stay one readable token."""
    columns = []
    for number, line in enumerate(read_lines(path), 1):
        group, _, value = line.partition(":")
        group, value = group.strip(), "_".join(value.split())
        if not group or not value or len(group.split()) != 1:
            raise ValueError(f"{path}, line {number}: expected 'group:value', got {line!r}")
        columns.append((group, value))
    return columns


def decode_features(path, matrix, columns):
    """One-hot rows to one value per group; a row without exactly one 1 in a group is an error."""
    groups = list(dict.fromkeys(group for group, _ in columns))
    indices = {group: [j for j, (g, _) in enumerate(columns) if g == group] for group in groups}
    values = []
    for number, row in enumerate(matrix, 1):
        record = []
        for group in groups:
            hot = [j for j in indices[group] if row[j] == 1]
            if len(hot) != 1:
                raise ValueError(f"{path}, line {number}: {len(hot)} ones in group '{group}', expected exactly one")
            record.append(columns[hot[0]][1])
        values.append(record)
    return groups, values


def split_train(ratings, valid_share, seed):
    """Per-user random hold-out, so every user with 2+ ratings is validated and keeps one to train on."""
    rng = np.random.default_rng(seed)
    valid = np.zeros(ratings.shape, dtype=bool)
    for user, row in enumerate(ratings):
        items = np.flatnonzero(row)
        if len(items) >= 2:
            count = min(len(items) - 1, max(1, round(valid_share * len(items))))
            valid[user, rng.permutation(items)[:count]] = True
    return ratings * ~valid, ratings * valid


def write_inter(path, ratings):
    """The nonzero entries of a rating matrix, by user then item, with 1-based ids."""
    users, items = np.nonzero(ratings)
    rows = ((u + 1, i + 1, ratings[u, i]) for u, i in zip(users, items))
    write_atomic_file(path, ["user_id:token", "item_id:token", "rating:float"], rows)


def write_features(path, id_field, groups, values):
    """Entity id (1-based row number) and one token field per feature group."""
    header = [f"{id_field}:token"] + [f"{group}:token" for group in groups]
    write_atomic_file(path, header, ([number] + record for number, record in enumerate(values, 1)))


def split_uniform_slice(test, share, seed):
    """``(test, uniform)`` rating matrices: :func:`~recbole_endo.data.uniform_slice.uniform_slice_mask`
    over the nonzero test entries in the order :func:`write_inter` writes them (user, then item)."""
    users, items = np.nonzero(test)
    sliced = np.zeros(test.shape, dtype=bool)
    mask = uniform_slice_mask(len(users), share, seed)
    sliced[users[mask], items[mask]] = True
    return test * ~sliced, test * sliced


def convert_coat(raw_dir, out_dir, dataset_name="coat", valid_share=0.1, seed=2020, uniform_slice=0.0):
    """Write ``out_dir/dataset_name/`` with .user, .item and .train/.valid/.test.inter; return its path.
    With ``uniform_slice`` > 0, that share of the test ratings (drawn per rating, seeded by ``seed``)
    goes to .uniform.inter instead of .test.inter (:mod:`recbole_endo.data.uniform_slice`).

    All input is read and checked before anything is written, so bad input leaves ``out_dir`` as it was.
    """
    if not 0 <= valid_share < 1:
        raise ValueError(f"valid_share must be in [0, 1), got {valid_share}")
    check_uniform_share(uniform_slice)
    if not os.path.isdir(raw_dir):
        raise FileNotFoundError(f"Coat raw folder not found: {raw_dir}")
    paths = {key: os.path.join(raw_dir, name) for key, name in RAW_FILES.items()}
    for path in paths.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Coat raw file not found: {path}")

    train = read_matrix(paths["train"], MAX_RATING)
    n_users, n_items = train.shape
    test = read_matrix(paths["test"], MAX_RATING)
    check_shape(paths["test"], test, n_users, n_items, f"users x items of {RAW_FILES['train']}")
    entities = {}
    for entity, count in (("user", n_users), ("item", n_items)):
        features_path, map_path = paths[f"{entity}_features"], paths[f"{entity}_map"]
        columns = read_map(map_path)
        features = read_matrix(features_path, 1)
        check_shape(features_path, features, count, len(columns), f"{entity}s x lines of {RAW_FILES[entity + '_map']}")
        entities[entity] = decode_features(features_path, features, columns)
    # RecBole has one namespace for all fields: a group in both files (gender) would mix user and
    # item tokens (create_dataset leaves one side unmapped, build() then fails), so items get a prefix.
    item_groups, item_values = entities["item"]
    item_groups = [f"item_{group}" if group in entities["user"][0] else group for group in item_groups]
    entities["item"] = item_groups, item_values
    train_part, valid_part = split_train(train, valid_share, seed)
    parts = [("train", train_part), ("valid", valid_part)]
    if uniform_slice:
        test, uniform = split_uniform_slice(test, uniform_slice, seed)
        parts.append((UNIFORM_PART, uniform))
    parts.append(("test", test))

    target = os.path.join(out_dir, dataset_name)
    with dataset_folder(target) as work:
        for entity, (groups, values) in entities.items():
            write_features(os.path.join(work, f"{dataset_name}.{entity}"), f"{entity}_id", groups, values)
        for part, ratings in parts:
            write_inter(os.path.join(work, f"{dataset_name}.{part}.inter"), ratings)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert raw Coat to RecBole atomic (benchmark) files.")
    parser.add_argument("raw_dir", help="folder with train.ascii, test.ascii and user_item_features/")
    parser.add_argument("out_dir", help="RecBole data_path; the dataset folder is written inside it")
    parser.add_argument("--name", default="coat", help="dataset name (folder and file prefix)")
    parser.add_argument("--valid_share", type=float, default=0.1, help="share of each user's train ratings held out")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the train/valid split (and of the uniform slice)")
    parser.add_argument("--uniform_slice", type=float, default=0.0,
                        help="share of the random test ratings (drawn per rating) written to <name>.uniform.inter "
                             "instead of the test, for propensity naive_bayes; 0 (default): none")
    args = parser.parse_args(argv)
    try:
        print(convert_coat(args.raw_dir, args.out_dir, args.name, args.valid_share, args.seed, args.uniform_slice))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
