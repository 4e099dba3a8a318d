import math
import os
import pickle
from collections import Counter

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from conftest import full_and_pointwise_scores

from recbole_endo import Config, TwoTowerConcat, TwoTowerSplit
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo

PLUGIN_MODELS = ["TwoTowerConcat", "TwoTowerSplit"]


def build_model(name, tiny):
    config = Config(model=name, **tiny)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return config.model_class(config, train_data._dataset)


@pytest.mark.parametrize("name", PLUGIN_MODELS + ["BPR"])
def test_model_trains_and_its_test_ndcg_is_each_users_ndcg_by_hand(name, tiny):
    result = run_recbole_endo(model=name, **tiny)
    assert result["epochs"] == 2
    users, values = result["per_user"]["ndcg@10"]
    assert len(users) == 40 and result["test_result"]["ndcg@10"] == pytest.approx(sum(values) / 40, abs=1e-4)
    # Each user's NDCG@10 by hand from the best checkpoint's scores: the user's training and
    # validation items leave the ranking (as does the padding id 0), the test items are the
    # relevant ones; DCG = sum of 1 / log2(rank + 1) over the relevant items of the top 10, over
    # the ideal DCG of min(10, test items) relevant items ranked first.
    _, model, _, train_data, valid_data, test_data = load_data_and_model(result["checkpoint"])
    splits = [data._dataset for data in (train_data, valid_data, test_data)]
    dataset = splits[0]
    model.eval()
    for token, value in zip(users, values):
        user = int(dataset.token2id("user_id", token))
        train_items, valid_items, test_items = (
            set(split.inter_feat["item_id"][split.inter_feat["user_id"] == user].tolist()) for split in splits
        )
        with torch.no_grad():
            scores = model.full_sort_predict(Interaction({"user_id": torch.tensor([user])})).view(-1).clone()
        scores[sorted(train_items | valid_items | {0})] = -math.inf
        top = scores.argsort(descending=True)[:10].tolist()
        dcg = sum(1 / math.log2(rank + 2) for rank, item in enumerate(top) if item in test_items)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(10, len(test_items))))
        assert value == pytest.approx(dcg / ideal, abs=1e-6), token


@pytest.mark.parametrize("name", PLUGIN_MODELS)
def test_predict_agrees_with_full_sort_predict(name, tiny):
    model = build_model(name, tiny).eval()
    full, pointwise = full_and_pointwise_scores(model, torch.tensor([1, 5, 9]))
    assert full.shape == (3, model.n_items)
    assert torch.allclose(full, pointwise, atol=1e-5)


def test_full_sort_predict_follows_weight_changes(tiny):
    model = build_model("TwoTowerSplit", tiny).eval()
    query = Interaction({"user_id": torch.tensor([3])})
    before = model.full_sort_predict(query).detach().clone()
    model.train()  # RecBole's trainer switches to training mode before every update
    with torch.no_grad():
        for parameter in model.towers["item"].parameters():
            parameter.add_(0.1)
    model.eval()
    after = model.full_sort_predict(query)
    pair = Interaction({"user_id": torch.tensor([3]), "item_id": torch.tensor([7])})
    assert not torch.allclose(before, after)
    assert torch.allclose(after[7], model.predict(pair)[0], atol=1e-5)


def test_checkpoint_loads_safely_and_rebuilds_the_model(tiny):
    result = run_recbole_endo(model="TwoTowerConcat", **tiny)
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["config"]["model"] == "TwoTowerConcat"
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert isinstance(model, TwoTowerConcat)
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_recbole_own_quick_start_runs_and_reloads_plugin_models(tiny):
    from recbole.quick_start import load_data_and_model as recbole_load_data_and_model
    from recbole.quick_start import run_recbole

    result = run_recbole(model="TwoTowerSplit", **tiny)  # reloads its best checkpoint to test
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    saved = os.listdir(tiny["config_dict"]["checkpoint_dir"])
    assert len(saved) == 1
    config, model, *_ = recbole_load_data_and_model(os.path.join(tiny["config_dict"]["checkpoint_dir"], saved[0]))
    assert isinstance(model, TwoTowerSplit) and config["dropout_prob"] == 0.0


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_checkpoint_with_arbitrary_pickled_object_is_refused_and_runs_no_code(tiny, tmp_path):
    marker = str(tmp_path / "code-ran")
    result = run_recbole_endo(model="TwoTowerSplit", **tiny)
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    checkpoint["other_parameter"] = _RunsCodeWhenUnpickled(marker)
    torch.save(checkpoint, result["checkpoint"])
    with pytest.raises(pickle.UnpicklingError):
        load_data_and_model(result["checkpoint"])
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", PLUGIN_MODELS + ["EndoDecouple"])
def test_same_seed_gives_identical_metrics(name, tiny):
    first = run_recbole_endo(model=name, saved=False, **tiny)
    second = run_recbole_endo(model=name, saved=False, **tiny)
    assert first["test_result"] == second["test_result"]
    assert first["best_valid_result"] == second["best_valid_result"]


def test_ipw_weighs_each_pair_of_the_ranking_loss_by_its_items_inverse_training_count(tiny):
    # eta 1 and plain BPR (every positive grade 1): a pair of item i weighs 1 / (1 + n_i), n_i the
    # item's training interactions, normalised to mean 1 over the batch.
    tiny["config_dict"].update({"sample_weight": "ipw", "ipw_eta": 1.0, "grade_thresholds": []})
    config = Config(model="TwoTowerSplit", **tiny)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)  # the initial weights, so the scores below are the same on every run
    model = TwoTowerSplit(config, train_data._dataset)
    counts = Counter(train_data._dataset.inter_feat["item_id"].tolist())  # counted from the split's rows
    popular = max(counts, key=counts.get)
    rare = min(counts, key=counts.get)
    n_popular, n_rare = counts[popular], counts[rare]
    assert n_popular > n_rare
    items = torch.tensor([popular, rare, popular])
    raw = torch.tensor([1 / (1 + n_popular), 1 / (1 + n_rare), 1 / (1 + n_popular)])
    assert torch.allclose(model.pair_weight(Interaction({"item_id": items})), raw / raw.mean())

    # The weights reach the loss: one user, the popular item against the rare one and the rare
    # against the popular, so the pairs' score differences are d and -d. By hand,
    # -(w_p log sigmoid(d) + w_r log sigmoid(-d)) / (w_p + w_r), w = 1 / (1 + n); unweighted pairs
    # would give -(log sigmoid(d) + log sigmoid(-d)) / 2, d (w_r - w_p) / (2 (w_p + w_r)) away
    # (log sigmoid(d) - log sigmoid(-d) = d).
    users = torch.tensor([1, 1])
    with torch.no_grad():  # scores 30 times the initial ones: d far from 0
        for parameter in model.towers["user"].output.parameters():
            parameter.mul_(30.0)
    batch = Interaction({"user_id": users, "item_id": torch.tensor([popular, rare]), "neg_item_id": torch.tensor([rare, popular])})
    model.train()
    loss = model.calculate_loss(batch)
    with torch.no_grad():
        d = float(model.forward(users[:1], torch.tensor([popular])) - model.forward(users[:1], torch.tensor([rare])))
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    weights = [1 / (1 + n_popular), 1 / (1 + n_rare)]
    by_hand = -(weights[0] * log_sigmoid(d) + weights[1] * log_sigmoid(-d)) / sum(weights)
    assert abs(d) > 0.5
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    unweighted = -(log_sigmoid(d) + log_sigmoid(-d)) / 2
    assert abs(by_hand - unweighted) > 0.1  # what a loss that dropped the weights would be off by


def test_graded_labels_without_a_rating_field_are_refused_and_empty_thresholds_mean_binary_bpr(tiny):
    tiny["config_dict"]["load_col"] = {
        "inter": ["user_id", "item_id", "timestamp"],
        "user": ["user_id", "age", "gender", "favourite"],
        "item": ["item_id", "title", "class", "price"],
    }
    message = r"'grade_thresholds' \[3\] needs the rating field 'rating'.*grade_thresholds: \[\]"
    with pytest.raises(ValueError, match=message):
        build_model("TwoTowerSplit", tiny)
    tiny["config_dict"]["grade_thresholds"] = []
    model = build_model("TwoTowerSplit", tiny)
    assert torch.equal(model.grades(Interaction({"item_id": torch.tensor([1, 2, 3])})), torch.ones(3, dtype=torch.long))


def test_within_user_pairs_need_grades_and_train_every_plugin_model(tiny):
    tiny["config_dict"].update({"within_user_weight": 1.0, "grade_thresholds": []})
    with pytest.raises(ValueError, match="'within_user_weight' is 1.0.*grade_thresholds"):
        build_model("TwoTowerSplit", tiny)
    tiny["config_dict"]["grade_thresholds"] = [3]
    for name in PLUGIN_MODELS + ["EndoDecouple"]:
        result = run_recbole_endo(model=name, saved=False, **tiny)
        assert all(math.isfinite(value) for value in result["test_result"].values())


def test_within_user_sampler_holds_the_training_split_only(tiny):
    tiny["config_dict"]["within_user_weight"] = 1.0
    config = Config(model="TwoTowerSplit", **tiny)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset)
    sampler = model.lower_grade_sampler
    train = train_data._dataset.inter_feat
    assert sorted(sampler.items.tolist()) == sorted(train["item_id"].tolist())
    # every drawn item is one of the user's training items rated below 3 (grade 1)
    users = train["user_id"][train["rating"] >= 3]
    items, grades, _ = sampler(users, torch.full_like(users, 2))
    low = {(int(u), int(i)) for u, i, r in zip(train["user_id"], train["item_id"], train["rating"]) if r < 3}
    assert all((int(u), int(i)) in low for u, i, g in zip(users, items, grades) if g == 1)
    assert all(i == 0 for i, g in zip(items.tolist(), grades.tolist()) if g == 2)


@pytest.mark.parametrize("name", PLUGIN_MODELS + ["EndoDecouple"])
def test_id_path_adds_the_ids_own_embedding_row_to_the_tower_output(name, tiny):
    tiny["config_dict"]["id_path"] = True
    model = build_model(name, tiny).eval()
    tower = model.towers["item"]
    items = torch.tensor([1, 2, 3])
    with torch.no_grad():
        tower.id_embedding.encoders["item_id"].weight.zero_()
        without = model.forward(torch.tensor([4, 4, 4]), items)
        user = model.towers["user"](torch.tensor([4]))[0]
        model.train()  # weights change: the cached representations are dropped
        shift = torch.tensor([1.0] * 8)
        tower.id_embedding.encoders["item_id"].weight[2] = shift
        model.eval()
        with_row = model.forward(torch.tensor([4, 4, 4]), items)
    # only item 2's score moves, by exactly user · shift
    assert torch.allclose(with_row - without, torch.tensor([0.0, float(user @ shift), 0.0]), atol=1e-5)


def test_item_mean_rating_scores_the_shrunk_mean_training_rating_of_each_item(tiny):
    tiny["config_dict"]["mean_rating_prior"] = 2.0
    config = Config(model="ItemMeanRating", **tiny)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset)
    train = train_data._dataset.inter_feat
    mean = float(train["rating"].double().mean())
    for item in (1, 2, 3):
        ratings = [float(r) for i, r in zip(train["item_id"], train["rating"]) if int(i) == item]
        expected = (sum(ratings) + 2.0 * mean) / (len(ratings) + 2.0)
        assert model.predict(Interaction({"item_id": torch.tensor([item])}))[0].item() == pytest.approx(expected, rel=1e-5)
    full = model.full_sort_predict(Interaction({"user_id": torch.tensor([1, 2])})).view(2, -1)
    assert torch.equal(full[0], full[1]) and torch.equal(full[0], model.item_score)


def test_item_mean_rating_runs_through_the_runner_and_needs_a_rating(tiny):
    result = run_recbole_endo(model="ItemMeanRating", **tiny)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    tiny["config_dict"]["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    tiny["config_dict"]["grade_thresholds"] = []
    with pytest.raises(ValueError, match="ItemMeanRating needs the rating field 'rating'"):
        run_recbole_endo(model="ItemMeanRating", **tiny)
