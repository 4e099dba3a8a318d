import copy
import math
import os
from collections import Counter

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction

from recbole_endo import Config, get_model
from recbole_endo.data.cold_start import PARTS, benchmark_names, main, write_cold_start_split
from recbole_endo.evaluation.protocols import cold_start_evaluation, cold_strata, full_ranking, stratum_metrics
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo

from conftest import DATA_DIR

TINY_DIR = os.path.join(DATA_DIR, "tiny")
N_ITEMS, N_USERS = 60, 40  # tests/data/tiny


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


def split_files(folder, entity):
    """``{part: (header, rows)}`` of a written split, rows as lists of strings."""
    files = {}
    for part, name in zip(PARTS, benchmark_names(entity)):
        header, *rows = read_lines(os.path.join(folder, f"tiny.{name}.inter"))
        files[part] = header, [row.split("\t") for row in rows]
    return files


@pytest.fixture
def cold_items(tmp_path):
    return write_cold_start_split(TINY_DIR, "tiny", str(tmp_path / "cold"), entity="item", seed=2020)


def tiny_cold(tiny, folder, entity, **options):
    """``run_recbole_endo``/Config arguments for a cold split written under ``folder``."""
    config_dict = {
        **tiny["config_dict"], "data_path": os.path.dirname(folder), "benchmark_filename": benchmark_names(entity),
        **options,
    }
    return {**tiny, "config_dict": config_dict}


@pytest.mark.parametrize("entity, column, n_ids", [("item", 1, N_ITEMS), ("user", 0, N_USERS)])
def test_split_moves_every_interaction_of_a_cold_id_to_valid_and_test_half_each(tmp_path, entity, column, n_ids):
    folder = write_cold_start_split(TINY_DIR, "tiny", str(tmp_path), entity=entity, cold_share=0.2, seed=7)
    files = split_files(folder, entity)
    source_header, *source_rows = read_lines(os.path.join(TINY_DIR, "tiny.inter"))
    assert {header for header, _ in files.values()} == {source_header}
    written = [row for _, rows in files.values() for row in rows]
    assert Counter(map("\t".join, written)) == Counter(source_rows)  # every interaction once, as written

    train_ids = {row[column] for row in files["train"][1]}
    counts = {part: Counter(row[column] for row in rows) for part, (_, rows) in files.items()}
    cold = (set(counts["valid"]) | set(counts["test"])) - train_ids
    assert len(cold) == round(0.2 * n_ids)
    for cold_id in cold:
        total = counts["valid"][cold_id] + counts["test"][cold_id]
        assert counts["valid"][cold_id] == total // 2
    for suffix in ("user", "item"):
        assert read_lines(os.path.join(folder, f"tiny.{suffix}")) == read_lines(os.path.join(TINY_DIR, f"tiny.{suffix}"))


def test_warm_interactions_are_split_8_1_1_per_user(cold_items):
    files = split_files(cold_items, "item")
    train_items = {row[1] for row in files["train"][1]}
    warm = {part: [row for row in rows if row[1] in train_items] for part, (_, rows) in files.items()}
    total = sum(len(rows) for rows in warm.values())
    assert len(warm["train"]) / total == pytest.approx(0.8, abs=0.05)
    assert len(warm["valid"]) / total == pytest.approx(0.1, abs=0.05)
    users_in_train = {row[0] for row in warm["train"]}
    assert all(row[0] in users_in_train for part in ("valid", "test") for row in warm[part])


def test_same_seed_same_files_other_seed_other_cold_items(tmp_path, cold_items):
    again = write_cold_start_split(TINY_DIR, "tiny", str(tmp_path / "again"), seed=2020)
    other = write_cold_start_split(TINY_DIR, "tiny", str(tmp_path / "other"), seed=2021)
    names = sorted(os.listdir(cold_items))
    assert sorted(os.listdir(again)) == names
    for name in names:
        assert read_lines(os.path.join(again, name)) == read_lines(os.path.join(cold_items, name))
    assert split_files(other, "item")["train"] != split_files(cold_items, "item")["train"]


def test_a_second_split_is_added_beside_the_files_already_there(cold_items):
    kept = os.path.join(cold_items, "tiny.other.inter")
    with open(kept, "w") as f:
        f.write("user_id:token\titem_id:token\n")
    write_cold_start_split(TINY_DIR, "tiny", os.path.dirname(cold_items), entity="user")
    names = set(os.listdir(cold_items))
    assert {f"tiny.{name}.inter" for name in benchmark_names("item") + benchmark_names("user")} <= names
    assert "tiny.other.inter" in names
    assert os.listdir(os.path.dirname(cold_items)) == ["tiny"]  # no temporary folder left


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        ({"source_dir": "/nonexistent"}, FileNotFoundError, r"/nonexistent/tiny\.inter"),
        ({"cold_share": 0.0}, ValueError, r"cold_share must be in \(0, 1\)"),
        ({"cold_share": 1.0}, ValueError, r"cold_share must be in \(0, 1\)"),
        ({"cold_share": 0.001}, ValueError, r"cold_share 0.001 of 60 ids makes 0 cold"),
        ({"entity": "movie"}, ValueError, r"entity must be one of item, user, got 'movie'"),
    ],
)
def test_bad_input_names_the_file_or_option_and_writes_nothing(tmp_path, arguments, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        write_cold_start_split(**{"source_dir": TINY_DIR, "dataset": "tiny", "out_dir": str(out), **arguments})
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize(
    "text, message",
    [
        ("user_id:token\tmovie:token\nu1\ti1\n", r"bad\.inter: no 'item_id' field in the header"),
        ("user_id:token\titem_id:token\nu1\ti1\nu2\n", r"bad\.inter, line 3: 1 fields, the header has 2"),
    ],
)
def test_malformed_interaction_file_names_the_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.inter").write_text(text)
    with pytest.raises(ValueError, match=message):
        write_cold_start_split(str(tmp_path), "bad", str(tmp_path / "out"))


def test_command_line_reports_errors_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=r"error: interaction file not found: .*missing\.inter"):
        main([TINY_DIR, "missing", str(tmp_path)])


def test_recbole_reads_the_split_as_written_and_trains_on_warm_items_only(tiny, cold_items):
    config = Config(model="BPR", **tiny_cold(tiny, cold_items, "item"))
    assert config["data_path"] == cold_items
    train, valid, test = data_preparation(config, create_dataset(config))
    files = split_files(cold_items, "item")
    for part, data in zip(PARTS, (train, valid, test)):
        assert len(data._dataset) == len(files[part][1])  # RecBole's filters dropped nothing
    cold = set(range(1, train._dataset.item_num)) - set(train._dataset.item_counter)
    assert len(cold) == round(0.2 * N_ITEMS)
    assert cold <= set(test._dataset.inter_feat["item_id"].tolist()) | set(valid._dataset.inter_feat["item_id"].tolist())


def test_data_path_is_honoured_for_ml_100k_and_may_name_the_seed():
    assert Config(model="BPR", dataset="ml-100k")["data_path"].endswith(os.path.join("dataset_example", "ml-100k"))
    config = Config(model="BPR", dataset="ml-100k", config_dict={"data_path": "splits/cold-{seed}", "seed": 2021})
    assert config["data_path"] == os.path.join("splits/cold-2021", "ml-100k")


def plugin_model(tiny, folder, entity, name):
    config = Config(model=name, **tiny_cold(tiny, folder, entity, dropout_prob=0.0))
    train = data_preparation(config, create_dataset(config))[0]._dataset
    return get_model(name)(config, train), train


def raw_tower(model, entity, ids):
    """The tower with every token's own embedding: train mode, where no replacement happens (no dropout)."""
    model.train()
    with torch.no_grad():
        return model.towers[entity](ids)


@pytest.mark.parametrize("name", ["TwoTowerSplit", "TwoTowerConcat", "EndoDecouple"])
@pytest.mark.parametrize("entity", ["item", "user"])
def test_unseen_atoms_are_ranked_with_the_mean_trained_embedding(tiny, tmp_path, name, entity):
    folder = write_cold_start_split(TINY_DIR, "tiny", str(tmp_path / "cold"), entity=entity)
    model, train = plugin_model(tiny, folder, entity, name)
    n_ids, counter = (train.item_num, train.item_counter) if entity == "item" else (train.user_num, train.user_counter)
    ids = torch.arange(1, n_ids)
    cold = torch.tensor([counter[i] == 0 for i in ids.tolist()])
    id_field = f"{entity}_id"
    assert cold.sum() == round(0.2 * (n_ids - 1))

    # Expected: the same tower with each unseen token's row overwritten by the mean of the seen rows.
    expected_model = copy.deepcopy(model)
    for module in expected_model.modules():
        for field in getattr(module, "fields", []):
            seen = getattr(module, f"seen_{field}", None)
            if seen is None:
                continue
            with torch.no_grad():
                weight = module.encoders[field].weight
                weight[~seen] = weight[1:][seen[1:]].mean(0)
            if field == id_field:
                assert torch.equal(seen[ids], ~cold)  # the id of a cold entity is unseen
    expected = raw_tower(expected_model, entity, ids)
    raw = raw_tower(model, entity, ids)
    model.eval()
    with torch.no_grad():
        scored = model.towers[entity](ids)
    assert torch.allclose(scored, expected, atol=1e-6)
    assert torch.equal(scored[~cold], raw[~cold])  # a warm entity's tokens are all seen
    assert not torch.allclose(scored[cold], raw[cold], atol=1e-4)


def test_full_ranking_scores_cold_items_as_pairwise_prediction_does(tiny, cold_items):
    model, train = plugin_model(tiny, cold_items, "item", "TwoTowerSplit")
    model.eval()
    users = torch.tensor([1, 2, 3])
    with torch.no_grad():
        full = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
        for row, user in enumerate(users.tolist()):
            items = torch.arange(train.item_num)
            assert torch.allclose(full[row], model.forward(torch.full_like(items, user), items), atol=1e-6)


@pytest.mark.parametrize("name", ["TwoTowerSplit", "EndoDecouple"])
def test_nothing_changes_when_every_entity_is_trained(tiny, name):
    every_interaction = {"eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "RO", "group_by": "user", "mode": "full"}}
    config = Config(model=name, **{**tiny, "config_dict": {**tiny["config_dict"], "dropout_prob": 0.0, **every_interaction}})
    dataset = create_dataset(config).build()[0]  # every user and item trained
    model = get_model(name)(config, dataset)
    for entity in ("user", "item"):
        table = dataset.get_user_feature() if entity == "user" else dataset.get_item_feature()
        for module in model.towers[entity].modules():
            for field in getattr(module, "token_fields", []):
                assert getattr(module, f"seen_{field}")[table[field].flatten()].all(), field
    for entity, n_ids in (("user", dataset.user_num), ("item", dataset.item_num)):
        ids = torch.arange(n_ids)
        raw = raw_tower(model, entity, ids)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model.towers[entity](ids), raw)


@pytest.mark.parametrize(
    "name, entity", [("TwoTowerSplit", "item"), ("BPR", "item"), ("TwoTowerSplit", "user"), ("Random", "item")]
)
def test_runs_report_each_stratum_over_the_users_the_split_files_put_in_it(tiny, cold_items, name, entity):
    if entity == "user":
        folder = write_cold_start_split(TINY_DIR, "tiny", os.path.dirname(cold_items), entity="user")
    else:
        folder = cold_items
    run = run_recbole_endo(model=name, **tiny_cold(tiny, folder, entity, cold_eval=entity, epochs=1))
    result, per_user = run["test_result"], run["per_user"]
    # By hand from the written files: a test row is cold when its item (user) has no training row.
    files = split_files(folder, entity)
    column = 1 if entity == "item" else 0
    trained = {row[column] for row in files["train"][1]}
    test = files["test"][1]
    cold_rows = [row for row in test if row[column] not in trained]
    assert result[f"cold:{entity}s"] == len({row[column] for row in cold_rows}) >= 1
    # Each stratum is averaged over the users with a test row of it, and only over them.
    users = {"cold": {row[0] for row in cold_rows}, "warm": {row[0] for row in test if row[column] in trained}}
    for stratum in ("cold", "warm"):
        for metric in ("ndcg@10", "recall@10", "ndcg@20", "recall@20"):
            key = f"{stratum}:{metric}"
            names, values = per_user[key]
            assert set(names) == users[stratum] and len(names) == len(users[stratum]), key
            assert result[key] == pytest.approx(sum(values) / len(values), abs=1e-4), key


def test_pop_counts_training_interactions_and_gives_cold_items_no_count(tiny, cold_items):
    pop_config = Config(model="Pop", dataset="ml-100k")
    assert pop_config["train_neg_sample_args"]["distribution"] == "none" and pop_config["train_batch_size"] == 1
    # tiny.yaml sets train_batch_size, and a config file outranks the plugin's Pop.yaml: given again.
    result = run_recbole_endo(model="Pop", **tiny_cold(tiny, cold_items, "item", cold_eval="item", train_batch_size=1))
    _, model, _, train_data, _, test_data = load_data_and_model(result["checkpoint"])
    counts = torch.zeros(model.n_items, dtype=torch.long)
    for item, count in train_data._dataset.item_counter.items():
        counts[item] = count
    assert torch.equal(model.item_cnt.view(-1), counts)
    cold_test_items = set(test_data._dataset.inter_feat["item_id"].tolist()) - set(train_data._dataset.item_counter)
    assert cold_test_items and all(counts[item] == 0 for item in cold_test_items)


def test_cold_items_rank_among_cold_items_and_cold_users_among_all_items():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5]] * 2)
    # Item 0 is the padding id (masked as history); user 0 has trained on item 2.
    history = torch.tensor([[True, False, True, False, False, False], [True, False, False, False, False, False]])
    positives = torch.tensor([[False, False, False, False, True, True], [False, True, False, False, False, True]])
    second = 1 / math.log2(3)  # NDCG of one relevant item at rank 2

    items = cold_strata("item", torch.tensor([False, False, False, True, False, True]), history, positives)
    cold = stratum_metrics(scores, *items["cold"], [1, 2])
    # Among the cold items 3 and 5 only, both users' cold test item 5 ranks second.
    assert cold["ndcg@1"] == 0.0 and cold["ndcg@2"] == pytest.approx(second, abs=1e-4) and cold["recall@2"] == 1.0
    warm = stratum_metrics(scores, *items["warm"], [1])
    assert warm["ndcg@1"] == 0.5  # user 0: ranking 1, 4 (item 2 is history); user 1: item 1 first

    users = cold_strata("user", torch.tensor([False, True]), history, positives)
    cold = stratum_metrics(scores, *users["cold"], [1, 2])
    assert cold["ndcg@1"] == 1.0 and cold["recall@2"] == 0.5  # user 1 alone, over every item
    warm = stratum_metrics(scores, *users["warm"], [2, 4])
    assert warm["ndcg@2"] == 0.0 and warm["recall@4"] == 1.0  # user 0: ranking 1, 3, 4, 5


def test_a_cold_valid_metric_scores_validation_on_the_new_items_among_the_validation_targets(tiny, cold_items):
    options = {"cold_eval": "item", "valid_metric": "cold:ndcg@10", "epochs": 2}
    result = run_recbole_endo(model="TwoTowerSplit", **tiny_cold(tiny, cold_items, "item", **options))
    files = split_files(cold_items, "item")
    train_items = {row[1] for row in files["train"][1]}
    valid = result["best_valid_result"]
    assert valid["cold:items"] == len({row[1] for row in files["valid"][1]} - train_items)  # the validation's
    assert result["best_valid_score"] == valid["cold:ndcg@10"]
    config, model, _, train_data, valid_data, _ = load_data_and_model(result["checkpoint"])
    train = train_data._dataset
    ranking = full_ranking(model.eval(), [train, valid_data._dataset])
    users, _, history, _ = ranking
    for row, user in enumerate(train.id2token("user_id", users)):  # the history is the training items only
        expected = {0} | {int(train.token2id("item_id", item)) for owner, item, *_ in files["train"][1] if owner == user}
        assert set(history[row].nonzero().flatten().tolist()) == expected
    again = cold_start_evaluation(config, train, ranking)
    assert again["cold:ndcg@10"] == pytest.approx(result["best_valid_score"], abs=1e-4)


@pytest.mark.parametrize("valid_metric, cold_eval", [("cold:ndcg@10", "none"), ("warm:ndcg@7", "item")])
def test_a_cold_valid_metric_without_cold_eval_or_of_another_cutoff_is_refused(tiny, cold_items, valid_metric, cold_eval):
    with pytest.raises(ValueError, match=f"'valid_metric' is '{valid_metric}'"):
        run_recbole_endo(model="Pop", **tiny_cold(tiny, cold_items, "item", cold_eval=cold_eval, valid_metric=valid_metric))


def test_unknown_cold_eval_names_the_option(tiny):
    with pytest.raises(ValueError, match="'cold_eval'"):
        run_recbole_endo(model="Pop", **{**tiny, "config_dict": {**tiny["config_dict"], "cold_eval": "items"}})
