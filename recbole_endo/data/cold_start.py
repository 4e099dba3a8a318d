"""Cold-start splits of a RecBole dataset, written as RecBole benchmark files.

A seeded random ``cold_share`` of the entity's ids (items or users) is *cold*: all of its
interactions go to validation and test, half each (seeded), so no cold id occurs in training.
The other (warm) interactions are split 8:1:1 at random per user, with RecBole's own rounding, as
its ``RS`` split with ``group_by: user`` splits them, so warm and cold results come side by side.

    python -m recbole_endo.data.cold_start SOURCE_DIR DATASET OUT_DIR [--entity item|user] [--cold_share 0.2] [--seed 2020]

reads ``SOURCE_DIR/DATASET.inter`` and writes ``OUT_DIR/DATASET/DATASET.cold_<entity>.{train,valid,test}.inter``
(the source's header and rows) with copies of ``DATASET.user`` and ``DATASET.item``. Run a model on it with
``--dataset=DATASET --data_path=OUT_DIR --benchmark_filename="['cold_item.train','cold_item.valid','cold_item.test']"``:
the dataset keeps its name, so its properties (``load_col``, ``endo_fields``) still apply.

With ``--sequential [--max_length 50]`` the split is for sequential models (cold items only):
each user's last interaction is the test target and the one before it the validation target
(RecBole's leave-one-out), and every earlier interaction with a cold item is dropped, so a cold
item is only ever a validation or test target (:func:`split_sequences`). It writes
``DATASET.cold_item_seq.{train,valid,test}.inter``, each row with the ``item_id_list`` of its
history, and ``DATASET.cold_item_seq.yaml`` with the options that read them (benchmark files,
the list's alias, ``MAX_ITEM_LIST_LENGTH``, ``load_col`` of every field):
``--dataset=DATASET --data_path=OUT_DIR --config_files=OUT_DIR/DATASET/DATASET.cold_item_seq.yaml``.
"""

import argparse
import os
import shutil
import sys
from collections import defaultdict

import numpy as np
import yaml
from recbole.data.dataset import Dataset

from recbole_endo.files import dataset_folder, write_atomic_file

ENTITIES = ("item", "user")
PARTS = ("train", "valid", "test")
WARM_RATIOS = [0.8, 0.1, 0.1]
FEATURE_FILES = ("user", "item")
SEQUENCE_FIELD = "item_id_list"  # RecBole's item field + LIST_SUFFIX


def benchmark_names(entity, sequential=False):
    """The ``benchmark_filename`` list of a cold-``entity`` split (a sequential one: ``cold_item_seq``)."""
    return [f"cold_{entity}{'_seq' if sequential else ''}.{part}" for part in PARTS]


def read_inter(path):
    """Header fields and rows (lists of strings, values kept as written) of a RecBole atomic file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a 'name:type' header")
    header = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue  # blank lines (a file's end) hold no interaction
        row = line.split("\t")
        if len(row) != len(header):
            raise ValueError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
        rows.append(row)
    return header, rows


def column(path, header, name):
    """Index of field ``name`` (RecBole's default id field names) in ``header``."""
    names = [field.split(":")[0] for field in header]
    if name not in names:
        raise ValueError(f"{path}: no '{name}' field in the header ({', '.join(header)})")
    return names.index(name)


def read_source(source_dir, dataset, cold_share):
    """``(path, header, rows)`` of ``source_dir/dataset.inter``, once ``cold_share`` is checked."""
    if not 0 < cold_share < 1:
        raise ValueError(f"cold_share must be in (0, 1), got {cold_share}")
    inter_path = os.path.join(source_dir, f"{dataset}.inter")
    if not os.path.isfile(inter_path):
        raise FileNotFoundError(f"interaction file not found: {inter_path}")
    return (inter_path, *read_inter(inter_path))


def feature_files(source_dir, dataset):
    """``{suffix: path}`` of the dataset's feature files (``.user``, ``.item``) that exist."""
    paths = {suffix: os.path.join(source_dir, f"{dataset}.{suffix}") for suffix in FEATURE_FILES}
    return {suffix: path for suffix, path in paths.items() if os.path.isfile(path)}


def cold_ids(entity_ids, cold_share, rng):
    """A random ``cold_share`` of the distinct ``entity_ids``, drawn with ``rng``."""
    ids = sorted(set(entity_ids))
    n_cold = round(cold_share * len(ids))
    if not 1 <= n_cold < len(ids):
        raise ValueError(
            f"cold_share {cold_share} of {len(ids)} ids makes {n_cold} cold; need at least one cold and one warm id"
        )
    return set(rng.choice(ids, size=n_cold, replace=False).tolist())


def split_cold_start(users, entity_ids, cold_share, seed):
    """Part index (0 train, 1 valid, 2 test) of each interaction.

    ``users`` and ``entity_ids`` are the interactions' user and cold-entity (user or item) ids.
    """
    rng = np.random.default_rng(seed)
    cold = cold_ids(entity_ids, cold_share, rng)
    rows_of_cold, rows_of_user = defaultdict(list), defaultdict(list)
    for row, (user, entity_id) in enumerate(zip(users, entity_ids)):
        if entity_id in cold:
            rows_of_cold[entity_id].append(row)
        else:
            rows_of_user[user].append(row)
    parts = np.zeros(len(users), dtype=int)
    for entity_id in sorted(rows_of_cold):
        rows = rng.permutation(rows_of_cold[entity_id])
        parts[rows[: len(rows) // 2]] = 1  # an odd interaction out goes to test
        parts[rows[len(rows) // 2 :]] = 2
    for user in sorted(rows_of_user):
        rows = rng.permutation(rows_of_user[user])
        # RecBole's rounding of a grouped ratio split (the method does not use its instance).
        train_end, valid_end = Dataset._calcu_split_ids(None, tot=len(rows), ratios=WARM_RATIOS)
        parts[rows[train_end:valid_end]] = 1
        parts[rows[valid_end:]] = 2
    return parts


def split_sequences(users, items, times, cold, max_length):
    """``(part, row, history)`` of each sequential example: ``row`` indexes the interaction that
    is its target, ``history`` lists the items before it, at most ``max_length`` of the latest.

    Per user, in time order: the last interaction is the test target and the one before it the
    validation target, whatever their items (RecBole's leave-one-out); every earlier interaction
    with a ``cold`` item is dropped, so a cold item is no training target and no step of any
    sequence; each remaining earlier interaction after the first is a training target. The test
    history ends with the validation target. A validation example without history is left out."""
    rows_of_user = defaultdict(list)
    for row, user in enumerate(users):
        rows_of_user[user].append(row)
    examples = []
    for user in sorted(rows_of_user):
        rows = sorted(rows_of_user[user], key=lambda row: times[row])  # stable: ties keep file order
        if len(rows) < 3:
            continue  # RecBole's leave-one-out needs a training, a validation and a test interaction
        *earlier, valid_row, test_row = rows
        kept = [row for row in earlier if items[row] not in cold]
        history = [items[row] for row in kept]
        examples += [("train", row, history[max(0, step - max_length) : step]) for step, row in enumerate(kept) if step]
        if history:
            examples.append(("valid", valid_row, history[-max_length:]))
        examples.append(("test", test_row, (history + [items[valid_row]])[-max_length:]))
    return examples


def write_sequential_cold_item_split(source_dir, dataset, out_dir, cold_share=0.2, seed=2020, max_length=50):
    """Write the sequential cold-item split of ``source_dir/dataset.inter`` (:func:`split_sequences`)
    to ``out_dir/dataset/`` as RecBole's sequential benchmark files, each row its target
    interaction plus an ``item_id_list`` of its history, and ``dataset.cold_item_seq.yaml``, the
    options that read them; return the folder."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    inter_path, header, rows = read_source(source_dir, dataset, cold_share)
    user_column, item_column = column(inter_path, header, "user_id"), column(inter_path, header, "item_id")
    time_column = column(inter_path, header, "timestamp")
    items = [row[item_column] for row in rows]
    try:
        times = [float(row[time_column]) for row in rows]
    except ValueError as error:
        raise ValueError(f"{inter_path}: timestamp must be a number ({error})") from None
    cold = cold_ids(items, cold_share, np.random.default_rng(seed))
    examples = split_sequences([row[user_column] for row in rows], items, times, cold, max_length)
    features = feature_files(source_dir, dataset)
    names = benchmark_names("item", sequential=True)
    options = {
        "benchmark_filename": names,
        "alias_of_item_id": [SEQUENCE_FIELD],  # the histories' tokens are item ids
        "MAX_ITEM_LIST_LENGTH": max_length,
        "load_col": {
            "inter": [field.split(":")[0] for field in header] + [SEQUENCE_FIELD],
            **{suffix: [field.split(":")[0] for field in read_inter(path)[0]] for suffix, path in features.items()},
        },
    }

    target = os.path.join(out_dir, dataset)
    with dataset_folder(target, keep_other_files=True) as work:
        for part, name in zip(PARTS, names):
            write_atomic_file(
                os.path.join(work, f"{dataset}.{name}.inter"), header + [f"{SEQUENCE_FIELD}:token_seq"],
                (rows[row] + [" ".join(history)] for p, row, history in examples if p == part),
            )
        with open(os.path.join(work, f"{dataset}.cold_item_seq.yaml"), "w", encoding="utf-8") as file:
            file.write("# The options that read this split (python -m recbole_endo.data.cold_start --sequential).\n")
            yaml.safe_dump(options, file, default_flow_style=None, sort_keys=False)
        for path in features.values():
            shutil.copyfile(path, os.path.join(work, os.path.basename(path)))
    return target


def write_cold_start_split(source_dir, dataset, out_dir, entity="item", cold_share=0.2, seed=2020):
    """Write the cold-``entity`` split of ``source_dir/dataset.inter`` to ``out_dir/dataset/``; return that folder.

    All input is read and checked before anything is written, so bad input leaves ``out_dir`` as it was.
    """
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {', '.join(ENTITIES)}, got {entity!r}")
    inter_path, header, rows = read_source(source_dir, dataset, cold_share)
    user_column, entity_column = column(inter_path, header, "user_id"), column(inter_path, header, f"{entity}_id")
    parts = split_cold_start(
        [row[user_column] for row in rows], [row[entity_column] for row in rows], cold_share, seed
    )

    target = os.path.join(out_dir, dataset)
    # Other benchmark splits already in the folder (the other entity's) stay.
    with dataset_folder(target, keep_other_files=True) as work:
        for part, name in enumerate(benchmark_names(entity)):
            write_atomic_file(
                os.path.join(work, f"{dataset}.{name}.inter"), header, (row for row, p in zip(rows, parts) if p == part)
            )
        for path in feature_files(source_dir, dataset).values():
            shutil.copyfile(path, os.path.join(work, os.path.basename(path)))
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a cold-start split of a RecBole dataset as benchmark files.")
    parser.add_argument("source_dir", help="folder with DATASET.inter (and DATASET.user / DATASET.item)")
    parser.add_argument("dataset", help="dataset name (file prefix)")
    parser.add_argument("out_dir", help="RecBole data_path; the dataset folder is written inside it")
    parser.add_argument("--entity", default="item", choices=ENTITIES, help="whose ids go cold")
    parser.add_argument("--cold_share", type=float, default=0.2, help="share of the entity's ids made cold")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the cold ids and of every split")
    parser.add_argument(
        "--sequential", action="store_true", help="cold items for sequential models: leave-one-out sequences"
    )
    parser.add_argument("--max_length", type=int, default=50, help="--sequential: items kept in each history")
    args = parser.parse_args(argv)
    if args.sequential and args.entity != "item":
        parser.error("--sequential splits cold items: a cold user has no sequence to continue")
    try:
        if args.sequential:
            folder = write_sequential_cold_item_split(
                args.source_dir, args.dataset, args.out_dir, args.cold_share, args.seed, args.max_length
            )
        else:
            folder = write_cold_start_split(
                args.source_dir, args.dataset, args.out_dir, args.entity, args.cold_share, args.seed
            )
        print(folder)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
