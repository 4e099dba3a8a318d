"""The propensity-based debiasing models (MF, MFIPS, MFDR, RelMF) and their propensity
estimators, each mechanism against a hand computation on the tiny data."""

import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction

from conftest import DATA_DIR, full_and_pointwise_scores
from recbole_endo import Config
from recbole_endo.experiments.tune import read_search_space, search_space_file
from recbole_endo.files import write_atomic_file
from recbole_endo.model import MF, MFDR, MFIPS, RelMF
from recbole_endo.model.propensity import (
    Propensity,
    item_counts,
    naive_bayes_propensity,
    observed_share_propensity,
    read_propensity_file,
    relative_popularity_propensity,
)
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo

DEBIAS_MODELS = ["MF", "MFIPS", "MFDR", "RelMF"]


def build(name, tiny, **options):
    tiny["config_dict"].update(options)
    config = Config(model=name, **tiny)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return config.model_class(config, train_data._dataset), train_data._dataset


def score(mf, user, item):
    """p_u . q_i + b_u + b_i + b, in plain floats."""
    p = mf.user_embedding.weight[user].tolist()
    q = mf.item_embedding.weight[item].tolist()
    biases = mf.user_bias[user].item() + mf.item_bias[item].item() + mf.global_bias.item()
    return sum(a * b for a, b in zip(p, q)) + biases


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(s, y):
    """The binary cross-entropy of sigmoid(s) against y in [0, 1], in plain floats."""
    return -(y * log_sigmoid(s) + (1 - y) * log_sigmoid(-s))


# --- the estimators, on a tiny matrix ------------------------------------------------------------


def test_popularity_propensities_by_hand():
    # 4 users, items 0..3 (0 the padding); item 1 rated twice, item 2 once, item 3 three times.
    counts = item_counts(torch.tensor([1, 1, 2, 3, 3, 3]), 4)
    assert counts.tolist() == [0, 2, 1, 3]
    assert observed_share_propensity(counts, 4).tolist() == [0, 0.5, 0.25, 0.75]  # n_i / U
    theta = relative_popularity_propensity(counts, 0.5)  # (n_i / max n) ** 0.5
    assert theta.tolist() == pytest.approx([0, math.sqrt(2 / 3), math.sqrt(1 / 3), 1])
    assert relative_popularity_propensity(counts, 1.0).tolist() == pytest.approx([0, 2 / 3, 1 / 3, 1])
    clipped = Propensity(theta, clip=0.6)  # max(theta, clip)
    assert clipped(None, torch.tensor([1, 2, 3])).tolist() == pytest.approx([math.sqrt(2 / 3), 0.6, 1])


def test_naive_bayes_propensities_by_hand():
    # 6 observed ratings of 20 pairs: P(O=1) = 0.3; P(r | O=1) = 2/6, 1/6, 3/6 for r = 1, 2, 3;
    # the uniform sample 1, 2, 2, 3: P(r) = 1/4, 2/4, 1/4. P(O=1 | r) = P(r | O=1) P(O=1) / P(r).
    propensities = naive_bayes_propensity([1, 1, 2, 3, 3, 3], [1, 2, 2, 3], 20)
    assert propensities == pytest.approx({1.0: 2 / 6 * 0.3 * 4, 2.0: 1 / 6 * 0.3 * 2, 3.0: 3 / 6 * 0.3 * 4})
    assert propensities == pytest.approx({1.0: 0.4, 2.0: 0.1, 3.0: 0.6})
    with pytest.raises(ValueError, match="rating 5 occurs in the observed ratings but not in the uniform sample"):
        naive_bayes_propensity([1, 5], [1, 2], 10)


# 3 users x 4 items, 12 pairs. Training: ratings 5, 1, 5, 3, 5, 1; the uniform slice: 1, 1, 1, 3, 5, 5
# (pairs of none of the test's; a pair may also be in training or validation, as on Coat).
NB_FILES = {
    "train": [(1, 1, 5), (1, 2, 1), (2, 1, 5), (2, 3, 3), (3, 2, 5), (3, 4, 1)],
    "valid": [(3, 1, 4)],
    "test": [(1, 1, 4), (2, 3, 2), (3, 2, 4)],
    "uniform": [(1, 3, 1), (1, 4, 1), (2, 2, 1), (2, 4, 3), (3, 1, 5), (3, 3, 5)],
}
# By hand: P(O=1) = 6 / 12; P(r | O=1) = 2/6, 1/6, 3/6 and P(r) = 3/6, 1/6, 2/6 for r = 1, 3, 5;
# P(O=1 | r) = P(r | O=1) P(O=1) / P(r).
NB_BY_HAND = {1.0: 2 / 6 * 0.5 / (3 / 6), 3.0: 1 / 6 * 0.5 / (1 / 6), 5.0: 3 / 6 * 0.5 / (2 / 6)}


def nb_dataset(tmp_path, files=NB_FILES):
    """Config arguments for the dataset ``nb`` of ``files`` (benchmark parts and the uniform slice)."""
    folder = tmp_path / "data" / "nb"
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in files.items():
        write_atomic_file(folder / f"nb.{part}.inter", ["user_id:token", "item_id:token", "rating:float"], rows)
    return {
        "dataset": "nb",
        "config_dict": {
            "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
            "benchmark_filename": ["train", "valid", "test"], "load_col": {"inter": ["user_id", "item_id", "rating"]},
            "embedding_size": 4, "train_batch_size": 4, "epochs": 1, "topk": [2], "valid_metric": "NDCG@2",
            "propensity": "naive_bayes",
        },
    }


def test_naive_bayes_propensities_by_hand_on_a_uniform_slice():
    assert NB_BY_HAND == pytest.approx({1.0: 1 / 3, 3.0: 1 / 2, 5.0: 3 / 4})
    ratings = [rating for _, _, rating in NB_FILES["train"]]
    assert naive_bayes_propensity(ratings, [rating for _, _, rating in NB_FILES["uniform"]], 12) == pytest.approx(NB_BY_HAND)


@pytest.mark.parametrize("name", ["MFIPS", "MFDR", "RelMF"])
def test_naive_bayes_propensities_are_read_from_the_uniform_slice_by_rating(name, tmp_path):
    model, dataset = build(name, nb_dataset(tmp_path))
    assert (dataset.user_num, dataset.item_num) == (3 + 1, 4 + 1)  # n_pairs = 3 x 4, RecBole's padding left out
    assert model.propensity.rating_values.tolist() == [1.0, 3.0, 5.0]
    assert model.propensity.table.tolist() == pytest.approx([NB_BY_HAND[1.0], NB_BY_HAND[3.0], NB_BY_HAND[5.0]])
    # Looked up by the pair's rating, whatever the user and item.
    weights = model.propensity(torch.tensor([1, 2, 3]), torch.tensor([4, 1, 2]), torch.tensor([5.0, 1.0, 3.0]))
    assert weights.tolist() == pytest.approx([0.75, 1 / 3, 0.5])
    with pytest.raises(ValueError, match=r"rating 4 has no naive Bayes propensity.*\[1\.0, 3\.0, 5\.0\]"):
        model.propensity(torch.tensor([1]), torch.tensor([1]), torch.tensor([4.0]))
    with pytest.raises(ValueError, match="looked up by the pairs' ratings"):
        model.propensity(torch.tensor([1]), torch.tensor([1]))


def test_mfips_with_naive_bayes_weighs_each_row_by_one_over_its_ratings_propensity(tmp_path):
    model, dataset = build("MFIPS", nb_dataset(tmp_path))
    user = [dataset.token2id("user_id", token) for token in ("1", "2")]
    item = [dataset.token2id("item_id", token) for token in ("2", "3")]
    batch = Interaction({"user_id": torch.tensor(user), "item_id": torch.tensor(item), "rating": torch.tensor([1.0, 3.0])})
    assert model.ips_weights(batch).tolist() == pytest.approx([3.0, 2.0])  # 1 / (1/3), 1 / (1/2)
    # N / (U I) * mean((r - r-hat)^2 / P), N = 6 training ratings of U I = 12 pairs.
    errors = [(score(model.mf, u, i) - r) ** 2 for u, i, r in zip(user, item, [1.0, 3.0])]
    by_hand = 6 / 12 * (errors[0] / NB_BY_HAND[1.0] + errors[1] / NB_BY_HAND[3.0]) / 2
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand, rel=1e-5)
    # A pair's propensity is its rating's: the same pairs rated 5 weigh 1 / 0.75 each.
    batch["rating"] = torch.tensor([5.0, 5.0])
    assert model.ips_weights(batch).tolist() == pytest.approx([4 / 3, 4 / 3])


def test_mfips_bce_weighs_each_rows_binary_cross_entropy_by_one_over_its_ratings_propensity(tmp_path):
    model, dataset = build("MFIPS", nb_dataset(tmp_path), rating_loss="bce")
    with torch.no_grad():
        model.mf.user_embedding.weight.mul_(20.0)
    user = [dataset.token2id("user_id", token) for token in ("1", "2", "3")]
    item = [dataset.token2id("item_id", token) for token in ("2", "3", "4")]
    ratings, labels = [5.0, 1.0, 3.0], [1.0, 0.0, 0.0]
    batch = Interaction({"user_id": torch.tensor(user), "item_id": torch.tensor(item), "rating": torch.tensor(ratings)})
    # Propensities stay those of the ratings (naive Bayes by rating value), the loss is the labels' BCE:
    # N / (U I) * mean(BCE(sigmoid(s), y) / P(O=1 | r)), N = 6 training ratings of U I = 12 pairs.
    assert model.ips_weights(batch).tolist() == pytest.approx([1 / NB_BY_HAND[5.0], 3.0, 2.0])
    terms = [bce(score(model.mf, u, i), y) / NB_BY_HAND[r] for u, i, r, y in zip(user, item, ratings, labels)]
    assert model.calculate_loss(batch).item() == pytest.approx(6 / 12 * sum(terms) / 3, rel=1e-5)


def test_mfdr_bce_with_naive_bayes_runs_through_the_runner(tmp_path):
    arguments = nb_dataset(tmp_path)
    arguments["config_dict"].update(rating_loss="bce", all_pairs_ratio=4)
    result = run_recbole_endo(model="MFDR", **arguments)
    assert all(math.isfinite(value) for value in result["test_result"].values())


def test_naive_bayes_runs_and_reloads_through_the_runner(tmp_path):
    arguments = nb_dataset(tmp_path)
    result = run_recbole_endo(model="MFIPS", **arguments)
    assert all(math.isfinite(value) for value in result["test_result"].values())
    # What a comparison table's provenance names: the test lacks the slice's 6 ratings.
    assert result["uniform_slice"] == (str(tmp_path / "data" / "nb" / "nb.uniform.inter"), 6)
    _, model, _, _, _, _ = load_data_and_model(result["checkpoint"])
    assert model.propensity.table.tolist() == pytest.approx([NB_BY_HAND[1.0], NB_BY_HAND[3.0], NB_BY_HAND[5.0]])


def test_naive_bayes_refuses_a_slice_that_shares_a_pair_with_the_test_or_lacks_a_training_rating(tmp_path):
    leaking = {**NB_FILES, "uniform": NB_FILES["uniform"] + [(2, 3, 3)]}  # (2, 3) is a test pair
    with pytest.raises(ValueError, match=r"nb\.uniform\.inter shares 1 pairs \(user 2, item 3, \.\.\.\) with the test split"):
        build("MFIPS", nb_dataset(tmp_path, leaking))
    no_three = {**NB_FILES, "uniform": [row for row in NB_FILES["uniform"] if row[2] != 3]}
    with pytest.raises(ValueError, match=r"nb\.uniform\.inter: rating 3 occurs in the observed ratings but not in the uniform"):
        build("MFDR", nb_dataset(tmp_path, no_three))
    # The slice's ratings are raw: min-max normalised training ratings would find no propensity.
    with pytest.raises(ValueError, match=r"'propensity' compares raw ratings, but RecBole normalises the rating field"):
        build("MFIPS", nb_dataset(tmp_path), normalize_all=True)


def test_a_propensity_file_is_read_by_raw_id(tmp_path):
    path = tmp_path / "propensities.ascii"
    path.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")  # users 1, 2 (rows) x items 1, 2, 3 (columns)
    # Internal ids: user 1 is raw user 2, user 2 raw user 1; item 1 is raw item 3, item 2 raw item 1.
    table = read_propensity_file(str(path), ["[PAD]", "2", "1"], ["[PAD]", "3", "1"])
    assert torch.allclose(table, torch.tensor([[1, 1, 1], [1, 0.6, 0.4], [1, 0.3, 0.1]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"user token 'u1' is not a raw id in 1\.\.2"):
        read_propensity_file(str(path), ["[PAD]", "u1"], ["[PAD]", "1"])
    with pytest.raises(ValueError, match=r"item token '4' is not a raw id in 1\.\.3"):
        read_propensity_file(str(path), ["[PAD]", "1"], ["[PAD]", "4"])
    path.write_text("0.1 0.0\n0.4 0.5\n")
    with pytest.raises(ValueError, match=r"row 1, column 2 is 0\.0, propensities must lie in \(0, 1\]"):
        read_propensity_file(str(path), ["[PAD]", "1"], ["[PAD]", "1"])


# --- each model's loss, on a batch of two or three rows -------------------------------------------


def test_mf_loss_is_the_mean_squared_error_of_the_observed_ratings(tiny):
    model, dataset = build("MF", tiny)
    batch = dataset.inter_feat[:3]
    rows = zip(batch["user_id"].tolist(), batch["item_id"].tolist(), batch["rating"].tolist())
    by_hand = sum((score(model.mf, u, i) - r) ** 2 for u, i, r in rows) / 3
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand, rel=1e-5)
    # The global bias starts at the mean training rating.
    assert float(model.mf.global_bias) == pytest.approx(float(dataset.inter_feat["rating"].mean()), rel=1e-6)


def test_mf_bce_loss_is_the_binary_cross_entropy_of_the_binarised_ratings(tiny):
    model, dataset = build("MF", tiny, rating_loss="bce")
    with torch.no_grad():  # scores far from 0, so the terms differ clearly
        model.mf.user_embedding.weight.mul_(20.0)
    users, items, ratings = [1, 2, 3], [4, 5, 6], [5.0, 3.0, 4.0]
    batch = Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(items), "rating": torch.tensor(ratings)})
    # binarize_threshold 4: rated 5 and 4 -> 1, rated 3 -> 0; the loss is the mean BCE of sigmoid(score).
    assert model.targets(batch["rating"]).tolist() == [1.0, 0.0, 1.0]
    by_hand = sum(bce(score(model.mf, u, i), y) for u, i, y in zip(users, items, [1.0, 0.0, 1.0])) / 3
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand, rel=1e-5)
    assert abs(build("MF", tiny, rating_loss="squared")[0].calculate_loss(batch).item() - by_hand) > 0.1  # not the MSE
    model, _ = build("MF", tiny, rating_loss="bce")
    # The global bias starts at the log-odds of the training ratings' share of 1s.
    share = float((dataset.inter_feat["rating"] >= 4).double().mean())
    assert float(model.mf.global_bias) == pytest.approx(math.log(share / (1 - share)), rel=1e-5)
    # binarize_threshold 3: the row rated 3 is a 1.
    model, _ = build("MF", tiny, rating_loss="bce", binarize_threshold=3)
    assert model.targets(batch["rating"]).tolist() == [1.0, 1.0, 1.0]
    by_hand = sum(bce(score(model.mf, u, i), 1.0) for u, i in zip(users, items)) / 3
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand, rel=1e-5)


def test_mfips_divides_each_squared_error_by_its_items_observed_share(tiny):
    model, dataset = build("MFIPS", tiny)
    train = dataset.inter_feat
    counts = Counter(train["item_id"].tolist())
    users, pairs = model.n_users - 1, (model.n_users - 1) * (model.n_items - 1)
    popular, rare = max(counts, key=counts.get), min(counts, key=counts.get)
    assert counts[popular] > 2 * counts[rare]
    batch = Interaction(
        {
            "user_id": torch.tensor([1, 2, 3]),
            "item_id": torch.tensor([popular, rare, popular]),
            "rating": torch.tensor([5.0, 1.0, 3.0]),
        }
    )
    # P_ui = n_i / U; the loss is the IPS sum's batch estimate, N / (U I) * mean(e / P).
    terms = [
        (score(model.mf, u, i) - r) ** 2 / (counts[i] / users)
        for u, i, r in zip([1, 2, 3], [popular, rare, popular], [5.0, 1.0, 3.0])
    ]
    by_hand = len(train) / pairs * sum(terms) / 3
    assert model.propensity(batch["user_id"], batch["item_id"]).tolist() == pytest.approx(
        [counts[popular] / users, counts[rare] / users, counts[popular] / users]
    )
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand, rel=1e-5)
    # What MF's unweighted loss on the same batch would be: not the same.
    unweighted = MF.calculate_loss(model, batch).item()
    assert abs(unweighted - by_hand) > 0.1 * by_hand


def test_relmf_loss_is_the_unbiased_log_loss_with_clipped_popularity_propensities(tiny):
    model, dataset = build("RelMF", tiny, propensity_clip=0.3)
    counts = Counter(dataset.inter_feat["item_id"].tolist())  # every training row is a click
    most = max(counts.values())
    popular, rare = max(counts, key=counts.get), min(counts, key=counts.get)
    assert math.sqrt(counts[rare] / most) < 0.3  # the clip binds for the rare item

    def theta(item):
        return max(math.sqrt(counts[item] / most), 0.3)

    with torch.no_grad():  # scores far from 0, so the terms differ clearly
        model.mf.user_embedding.weight.mul_(20.0)
        model.mf.global_bias.fill_(2.0)
    users, items, labels = [1, 2, 3], [popular, rare, rare], [1.0, 1.0, 0.0]
    batch = Interaction(
        {
            "user_id": torch.tensor(users),
            "item_id": torch.tensor(items),
            "label": torch.tensor(labels),
            "rating": torch.tensor([2.0, 5.0, 5.0]),
        }
    )

    def by_hand(clicks):
        losses = []
        for u, i, y in zip(users, items, clicks):
            s, w = score(model.mf, u, i), y / theta(i)
            losses.append(-(w * log_sigmoid(s) + (1 - w) * log_sigmoid(-s)))
        return sum(losses) / 3

    assert model.propensity(None, torch.tensor([popular, rare])).tolist() == pytest.approx([theta(popular), theta(rare)])
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand(labels), rel=1e-5)
    naive = -sum(
        y * log_sigmoid(score(model.mf, u, i)) + (1 - y) * log_sigmoid(-score(model.mf, u, i))
        for u, i, y in zip(users, items, labels)
    ) / 3
    assert abs(naive - by_hand(labels)) > 0.1  # the log loss without the 1 / theta weights

    # click_threshold 4: the first row (rated 2) is a non-click; the sampled row stays one whatever
    # the rating it carries; the propensities count the training rows rated 4 or more (theta and
    # by_hand read model, counts and most when called: the new ones below).
    model, dataset = build("RelMF", tiny, propensity_clip=0.3, click_threshold=4)
    train = dataset.inter_feat
    counts = Counter(train["item_id"][train["rating"] >= 4].tolist())
    most = max(counts.values())
    assert model.clicks(batch).tolist() == [0.0, 1.0, 0.0]
    with torch.no_grad():
        model.mf.user_embedding.weight.mul_(20.0)
        model.mf.global_bias.fill_(2.0)
    assert model.calculate_loss(batch).item() == pytest.approx(by_hand([0.0, 1.0, 0.0]), rel=1e-5)


def squared_dr_errors(r, predicted, imputed):
    """rating_loss squared: e = (r - r-hat)^2, e-hat = (r-hat - r-tilde)^2 in both models' steps."""
    return (r - predicted) ** 2, (predicted - imputed) ** 2, (predicted - imputed) ** 2


def bce_dr_errors(r, predicted, imputed):
    """rating_loss bce, as the papers' MF_DR: y = [r >= 4], e = BCE(sigmoid(r-hat), y); the
    prediction's step imputes BCE(sigmoid(r-hat), sigmoid(r-tilde)), the imputation's step scores
    BCE(sigmoid(r-tilde), sigmoid(r-hat)) (their binary_cross_entropy(imputation_y, pred))."""
    y = 1.0 if r >= 4 else 0.0
    return bce(predicted, y), bce(predicted, sigmoid(imputed)), bce(imputed, sigmoid(predicted))


@pytest.mark.parametrize("rating_loss, errors", [("squared", squared_dr_errors), ("bce", bce_dr_errors)])
def test_mfdr_terms_by_hand_and_each_model_learns_from_its_own_objective_only(rating_loss, errors, tiny):
    model, dataset = build("MFDR", tiny, rating_loss=rating_loss)
    with torch.no_grad():  # scores far apart, so that each term counts
        model.mf.user_embedding.weight.mul_(5.0)
        model.imputation.item_embedding.weight.mul_(5.0)
    train = dataset.inter_feat
    counts = Counter(train["item_id"].tolist())
    users_count, pairs = model.n_users - 1, (model.n_users - 1) * (model.n_items - 1)
    share = len(train) / pairs
    # Two training rows, one rated 4 or more and one below (a 1 and a 0 under bce).
    high, low = int(torch.nonzero(train["rating"] >= 4)[0]), int(torch.nonzero(train["rating"] < 4)[0])
    observed = train[[high, low]]
    sampled_users, sampled_items = torch.tensor([4, 9, 1]), torch.tensor([7, 2, 30])
    dr_loss, imputation_loss = model.dr_losses(observed, sampled_users, sampled_items)

    # By hand: r-hat from the prediction model, r-tilde from the imputation model, p = n_i / U,
    # the errors of the rating loss (above).
    dr_observed, imputation_terms = [], []
    for u, i, r in zip(observed["user_id"].tolist(), observed["item_id"].tolist(), observed["rating"].tolist()):
        predicted, imputed = score(model.mf, u, i), score(model.imputation, u, i)
        error, imputed_error, imputation_step_error = errors(r, predicted, imputed)
        p = counts[i] / users_count
        dr_observed.append((error - imputed_error) / p)
        imputation_terms.append((error - imputation_step_error) ** 2 / p)
    direct = [
        errors(0.0, score(model.mf, u, i), score(model.imputation, u, i))[1] for u, i in zip([4, 9, 1], [7, 2, 30])
    ]
    assert dr_loss.item() == pytest.approx(sum(direct) / 3 + share * sum(dr_observed) / 2, rel=1e-5)
    assert imputation_loss.item() == pytest.approx(share * sum(imputation_terms) / 2, rel=1e-5)

    def gradients(loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        return {
            name: torch.zeros_like(parameter) if parameter.grad is None else parameter.grad.clone()
            for name, parameter in model.named_parameters()
        }

    dr_grads, imputation_grads = gradients(dr_loss), gradients(imputation_loss)
    total_grads = gradients(dr_loss + imputation_loss)  # what RecBole's trainer backpropagates
    prediction = [name for name in dr_grads if name.startswith("mf.")]
    imputation = [name for name in dr_grads if name.startswith("imputation.")]
    assert len(prediction) == len(imputation) == 5
    # The DR loss reaches only the prediction model, the imputation loss only the imputation model.
    assert all(dr_grads[name].abs().sum() > 0 for name in prediction)
    assert all(dr_grads[name].abs().sum() == 0 for name in imputation)
    assert all(imputation_grads[name].abs().sum() > 0 for name in imputation)
    assert all(imputation_grads[name].abs().sum() == 0 for name in prediction)
    for name in prediction:
        assert torch.allclose(total_grads[name], dr_grads[name])
    for name in imputation:
        assert torch.allclose(total_grads[name], imputation_grads[name])


def test_mfdr_draws_all_pairs_ratio_pairs_per_observed_rating_from_the_whole_matrix(tiny, monkeypatch):
    model, dataset = build("MFDR", tiny, all_pairs_ratio=3)
    drawn = model.sample_pairs(5000)
    assert drawn[0].min() >= 1 and drawn[1].min() >= 1  # never the padding id
    assert drawn[0].max() == model.n_users - 1 and drawn[1].max() == model.n_items - 1
    sizes = []
    original = model.sample_pairs
    monkeypatch.setattr(model, "sample_pairs", lambda count: sizes.append(count) or original(count))
    losses = model.calculate_loss(dataset.inter_feat[:4])
    assert sizes == [12] and isinstance(losses, tuple) and len(losses) == 2


# --- the model frame: scoring, options, checkpoints ------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [(name, {}) for name in DEBIAS_MODELS] + [(name, {"rating_loss": "bce"}) for name in ("MF", "MFIPS", "MFDR")],
)
def test_predict_agrees_with_full_sort_predict(name, options, tiny):
    model, _ = build(name, tiny, **options)
    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():  # biases away from their initial zeros
            parameter.add_(0.01 * torch.randn_like(parameter))
    full, pointwise = full_and_pointwise_scores(model, torch.tensor([1, 5, 9]))
    assert full.shape == (3, model.n_items)
    assert torch.allclose(full, pointwise, atol=1e-5)
    assert pointwise[1, 7].item() == pytest.approx(score(model.mf, 5, 7), abs=1e-5)


@pytest.mark.parametrize("name", DEBIAS_MODELS)
def test_checkpoint_reloads_through_the_runner(name, tiny):
    result = run_recbole_endo(model=name, **tiny)
    assert result["epochs"] == 2 and all(math.isfinite(value) for value in result["test_result"].values())
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    config, model, _, _, _, _ = load_data_and_model(result["checkpoint"])
    assert type(model).__name__ == name and config["model"] == name
    assert set(model.state_dict()) == set(checkpoint["state_dict"])
    for key, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], tensor), key
    if name == "MFDR":
        assert any(key.startswith("imputation.") for key in checkpoint["state_dict"])


def test_a_propensity_file_reaches_the_model_by_raw_id(tiny, tmp_path):
    # The tiny data with Coat-style raw ids: "u7" -> "7", "i12" -> "12".
    folder = tmp_path / "rawids"
    folder.mkdir()
    with open(os.path.join(DATA_DIR, "tiny", "tiny.inter")) as source, open(folder / "rawids.inter", "w") as target:
        target.write(next(source))
        for line in source:
            user, item, *rest = line.rstrip("\n").split("\t")
            target.write("\t".join([user[1:], item[1:], *rest]) + "\n")
    matrix = (np.arange(40 * 60).reshape(40, 60) + 1) / (40 * 60 + 1)
    np.savetxt(tmp_path / "propensities.ascii", matrix)
    tiny["dataset"] = "rawids"
    tiny["config_dict"].update(
        data_path=str(tmp_path), load_col={"inter": ["user_id", "item_id", "rating", "timestamp"]}, endo_fields=None
    )
    model, dataset = build("MFIPS", tiny, propensity="file", propensity_file=str(tmp_path / "propensities.ascii"))
    users, items = dataset.inter_feat["user_id"][:5], dataset.inter_feat["item_id"][:5]
    raw = [
        matrix[int(dataset.id2token("user_id", u)) - 1, int(dataset.id2token("item_id", i)) - 1]
        for u, i in zip(users.tolist(), items.tolist())
    ]
    assert model.propensity(users, items).tolist() == pytest.approx(raw, rel=1e-6)


def test_a_propensity_file_with_other_tokens_is_refused_naming_the_token(tiny, tmp_path):
    np.savetxt(tmp_path / "propensities.ascii", np.full((40, 60), 0.5))
    with pytest.raises(ValueError, match=r"user token 'u\d+' is not a raw id"):
        build("MFIPS", tiny, propensity="file", propensity_file=str(tmp_path / "propensities.ascii"))


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("MFIPS", {"propensity": "pop"}, r"'propensity' must be popularity or file or naive_bayes, got 'pop'"),
        (
            "MFIPS",
            {"propensity": "naive_bayes"},
            r"'propensity' naive_bayes \(MFIPS\) estimates P\(r\) on the dataset's uniformly exposed slice "
            r"\S+tiny\.uniform\.inter, which does not exist: .*--uniform_slice",
        ),
        ("RelMF", {"propensity": "naive_bayes"}, r"'propensity' naive_bayes \(RelMF\) .*tiny\.uniform\.inter"),
        ("MFIPS", {"propensity": "file"}, r"'propensity' file needs 'propensity_file'"),
        ("MFDR", {"propensity_clip": 2}, r"'propensity_clip' must be a number in \[0, 1\]"),
        ("MFDR", {"all_pairs_ratio": 0}, r"'all_pairs_ratio' must be an integer in \[1, inf\]"),
        ("MF", {"rating_loss": "mse"}, r"'rating_loss' must be squared or bce, got 'mse'"),
        ("MFDR", {"rating_loss": "bce", "binarize_threshold": "high"}, r"'binarize_threshold' must be a number.*'high'"),
        ("MFIPS", {"rating_loss": "bce", "normalize_all": True}, r"'binarize_threshold' compares raw ratings"),
        (
            "MF",
            {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
            r"'train_neg_sample_args'.*carry its positive's rating",
        ),
        ("RelMF", {"train_neg_sample_args": None}, r"'train_neg_sample_args' .*sampled non-clicks"),
        ("RelMF", {"click_threshold": 4, "normalize_all": True}, r"'click_threshold' compares raw ratings"),
        ("RelMF", {"propensity_eta": -1}, r"'propensity_eta' must be a number in \[0, inf\]"),
        (
            "MF",
            {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "endo_fields": None},
            r"MF fits ratings: it needs the rating field 'rating'",
        ),
    ],
)
def test_bad_options_are_refused_before_training_naming_the_option(name, options, message, tiny):
    with pytest.raises(ValueError, match=message):
        build(name, tiny, **options)


@pytest.mark.parametrize("name", DEBIAS_MODELS)
def test_the_search_space_names_only_options_the_model_has(name, tiny):
    space = read_search_space(str(search_space_file(name)), Config(model=name, **tiny))
    assert {"learning_rate", "weight_decay", "embedding_size"} <= set(space)
