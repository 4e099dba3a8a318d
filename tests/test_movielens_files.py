"""recbole_endo/properties/dataset/ml-1m.yaml, ml-10m.yaml, ml-20m.yaml and the RecBole-GNN ml-1m protocol file,
on small atomic files with the headers of RecBole's own files of those sets, written here (MovieLens'
licence forbids redistributing the data, and these machines cannot download it)."""

import math
import os

import pytest
import recbole.config
import recbole.data
from recbole.utils import init_seed

import recbole_endo
from recbole_endo.quick_start import build, run_recbole_endo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = os.path.join(ROOT, "recbole_endo", "properties", "protocols", "ml-1m-recbole-gnn.yaml")

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
# RecBole's atomic ml-1m (its docs, user_guide/data/atomic_files.rst).
ML1M_USER_HEADER = ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]
ML1M_ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
# ml-10m / ml-20m have no user file; their item file as RecBole's docs name ml-1m's columns, and as
# RecBole's conversion tool (RecSysDatasets, extended_dataset.py) names them for these two sets.
ITEM_SPELLINGS = {
    "movie_title/genre": ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"],
    "movie_name/type": ["item_id:token", "movie_name:token_seq", "release_year:token", "type:token_seq"],
}

USERS, ITEMS, RATED_ITEMS = 8, 16, 14  # items 15 and 16 are in the item file, never rated
TITLES = ["Toy Story", "Jumanji", "Heat", "Casino", "Sabrina", "Nixon", "Balto", "Othello",
          "Now and Then", "Persuasion", "Dead Presidents", "Restoration", "Mortal Kombat", "Friday",
          "Screamers", "Clueless"]
GENRES = ["Animation Children's Comedy", "Action Crime Thriller", "Drama Romance", "Comedy"]


def ratings(half_stars=False):
    """74 ratings: user u rates item i <= 14 unless (u + 2i) % 3 == 0; every user leaves items
    unrated. Items 5, 10 and 14 get only ratings below 3, and user 5 too (checked below)."""
    rows = []
    for user in range(1, USERS + 1):
        for item in range(1, RATED_ITEMS + 1):
            if (user + 2 * item) % 3:
                rating = 1 if item == 14 else (user * item) % 5 + 1
                rows.append([user, item, rating - 0.5 if half_stars and item % 2 else rating, 1e9 + 100 * user + item])
    return rows


def write(path, header, rows):
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows))


def write_movielens(data_path, dataset, item_header=ML1M_ITEM_HEADER):
    """``data_path/dataset/`` with ``dataset``.inter, .item and, for ml-1m, .user."""
    folder = os.path.join(data_path, dataset)
    os.makedirs(folder)
    write(os.path.join(folder, f"{dataset}.inter"), INTER_HEADER, ratings(half_stars=dataset != "ml-1m"))
    items = [[item, TITLES[item - 1], 1990 + item % 3, GENRES[item % 4]] for item in range(1, ITEMS + 1)]
    write(os.path.join(folder, f"{dataset}.item"), item_header, items)
    if dataset == "ml-1m":
        users = [[user, [1, 18, 25, 56][user % 4], "MF"[user % 2], user % 3, f"4806{user}"] for user in range(1, USERS + 1)]
        write(os.path.join(folder, f"{dataset}.user"), ML1M_USER_HEADER, users)
    return str(data_path)


def small_run(data_path, tmp_path, **options):
    return {
        "data_path": data_path, "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
        "epochs": 1, "train_batch_size": 16, "embedding_size": 4, "mlp_hidden_size": [8, 4],
        "topk": [10], "valid_metric": "NDCG@10", **options,
    }


def tower_fields(model, entity):
    """``{group: fields}`` each branch of the entity's tower embeds."""
    return {group: embedding.fields for group, embedding in model.towers[entity].embeddings.items()}


def test_the_tiny_ratings_are_as_documented():
    rows = ratings()
    assert len(rows) == 74 and {u for u, *_ in rows} == set(range(1, 9))
    assert all(len({i for u, i, *_ in rows if u == user}) < RATED_ITEMS for user in range(1, 9))
    low_only = {i for i in range(1, 15) if all(r < 3 for _, j, r, _ in rows if j == i)}
    assert low_only == {5, 10, 14} and all(r < 3 for u, _, r, _ in rows if u == 5)


def test_ml_1m_runs_endo_decouple_on_recbole_s_fields(tmp_path):
    data_path = write_movielens(tmp_path / "data", "ml-1m")
    config = recbole_endo.Config(model="EndoDecouple", dataset="ml-1m", config_dict=small_run(data_path, tmp_path))
    assert config["normalize_all"] is False and config["grade_thresholds"] == [3]
    _, model, trainer, (train_data, valid_data, test_data) = build(config)
    assert model.endo_fields == {
        "user": {"atom": ["user_id", "zip_code"], "side": ["age", "gender", "occupation"]},
        "item": {"atom": ["item_id", "movie_title"], "side": ["release_year", "genre"]},
    }
    assert tower_fields(model, "user") == {"atom": ["user_id", "zip_code"], "side": ["age", "gender", "occupation"]}
    assert tower_fields(model, "item") == {"atom": ["item_id", "movie_title"], "side": ["release_year", "genre"]}
    assert model.towers["user"].decoupled and model.towers["item"].decoupled
    dataset = train_data._dataset
    assert dataset.field2type["movie_title"].value == "token_seq" and dataset.field2type["genre"].value == "token_seq"
    assert float(dataset.inter_feat["rating"].max()) == 5.0  # raw ratings, for the grades
    trainer.fit(train_data, valid_data, saved=False)
    assert {"user_side_ssl", "item_side_ssl"} <= set(trainer.loss_component_history[0])
    assert all(math.isfinite(value) for value in trainer.evaluate(test_data, load_best_model=False).values())


@pytest.mark.parametrize("spelling", sorted(ITEM_SPELLINGS))
@pytest.mark.parametrize("dataset", ["ml-10m", "ml-20m"])
def test_ml_10m_and_20m_read_either_spelling_of_the_item_file(tmp_path, dataset, spelling):
    header = ITEM_SPELLINGS[spelling]
    title, _, genres = (column.split(":")[0] for column in header[1:])
    data_path = write_movielens(tmp_path / "data", dataset, header)
    config = recbole_endo.Config(model="EndoDecouple", dataset=dataset, config_dict=small_run(data_path, tmp_path))
    assert config["normalize_all"] is False and config["grade_thresholds"] == [3]
    loaded, model, trainer, (train_data, valid_data, _) = build(config)
    # Derived from the loaded spelling: 16 titles for 16 movies (atom); 3 years, 4 genre lists (side).
    # The tool's genre column is named type, an attribute of every torch module: embedded all the same.
    intended = {"user": {"atom": ["user_id"], "side": []}, "item": {"atom": ["item_id", title], "side": ["release_year", genres]}}
    assert model.endo_fields == intended
    assert tower_fields(model, "user") == {"atom": ["user_id"]}
    assert tower_fields(model, "item") == intended["item"]
    assert not model.towers["user"].decoupled and model.towers["item"].decoupled
    assert sorted(set(loaded.inter_feat["rating"].tolist()))[:2] == [0.5, 1.0]  # half stars, raw
    trainer.fit(train_data, valid_data, saved=False)
    components = trainer.loss_component_history[0]
    assert "item_side_ssl" in components and not [name for name in components if name.startswith("user_")]


def recbole_gnn_config(data_path):
    """RecBole's own Config with RecBole-GNN's ml-1m properties (results/general/ml-1m.md): the
    interactions alone, ratings below 3 removed, RecBole's default split."""
    return recbole.config.Config(model="BPR", dataset="ml-1m", config_dict={
        "data_path": data_path, "state": "ERROR", "load_col": {"inter": ["user_id", "item_id", "rating"]},
        "val_interval": {"rating": "[3,inf)"}, "unused_col": {"inter": ["rating"]},
        "valid_metric": "MRR@10", "embedding_size": 64,
    })


def split_pairs(config):
    """The dataset and its (train, valid, test) (user, item) token pairs, seeded as a run seeds them."""
    init_seed(config["seed"], config["reproducibility"])
    dataset = recbole.data.create_dataset(config)
    splits = recbole.data.data_preparation(config, dataset)
    pairs = []
    for split in splits:
        part = split._dataset
        users = part.id2token(part.uid_field, part.inter_feat[part.uid_field])
        items = part.id2token(part.iid_field, part.inter_feat[part.iid_field])
        pairs.append(sorted(zip(users.tolist(), items.tolist())))
    return dataset, pairs


def test_the_recbole_gnn_protocol_file_splits_as_recbole_gnn_with_the_features_loaded(tmp_path):
    data_path = write_movielens(tmp_path / "data", "ml-1m")
    config = recbole_endo.Config(model="BPR", dataset="ml-1m", config_file_list=[PROTOCOL], config_dict={"data_path": data_path, "state": "ERROR"})
    assert config["metrics"] == ["Recall", "MRR", "NDCG", "Hit", "Precision"] and config["topk"] == [10]
    assert config["valid_metric"] == "MRR@10" and config["embedding_size"] == 64
    assert (config["epochs"], config["train_batch_size"]) == (500, 4096)
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["load_col"]["user"] and config["load_col"]["item"]  # the dataset file's features stay
    dataset, pairs = split_pairs(config)
    # By hand (test_the_tiny_ratings_are_as_documented): 38 ratings >= 3 of 7 users on 11 items;
    # items 5, 10, 14 (only low ratings), 15, 16 (none) and user 5 are gone, features loaded or not.
    assert (dataset.inter_num, dataset.user_num - 1, dataset.item_num - 1) == (38, 7, 11)
    assert len(dataset.get_item_feature()) == 11 + 1 and len(dataset.get_user_feature()) == 7 + 1
    reference, reference_pairs = split_pairs(recbole_gnn_config(data_path))
    assert (reference.inter_num, reference.user_num, reference.item_num) == (dataset.inter_num, dataset.user_num, dataset.item_num)
    assert pairs == reference_pairs  # the same train / valid / test interactions


def test_endo_decouple_runs_under_the_recbole_gnn_protocol(tmp_path):
    data_path = write_movielens(tmp_path / "data", "ml-1m")
    options = {**small_run(data_path, tmp_path), "embedding_size": 64}
    del options["topk"], options["valid_metric"]  # the protocol's
    result = run_recbole_endo(model="EndoDecouple", dataset="ml-1m", config_file_list=[PROTOCOL], config_dict=options)
    assert sorted(result["test_result"]) == ["hit@10", "mrr@10", "ndcg@10", "precision@10", "recall@10"]
    assert all(math.isfinite(value) for value in result["test_result"].values())
