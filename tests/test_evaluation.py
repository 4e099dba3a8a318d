import math
from collections import Counter

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.evaluator import metric_types
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.evaluator import Evaluator

from recbole_endo import Config, quick_start
from recbole_endo import trainer as trainer_module
from recbole_endo.evaluation.metrics import GradedNDCG
from recbole_endo.evaluation.protocols import (
    candidate_lists,
    head_items,
    list_evaluation,
    rank_lists,
    stratum_metrics,
)
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo
from recbole_endo.registry import get_model

INF = float("inf")


def discount(rank):
    return 1 / math.log2(rank + 1)


def test_graded_ndcg_is_registered_with_recbole_and_matches_a_hand_computation():
    assert "gradedndcg" in metric_types  # RecBole's Config accepts it in `metrics`
    evaluator = Evaluator({"metrics": ["GradedNDCG"], "topk": [1, 2], "metric_decimal_place": 4})
    struct = DataStruct()
    struct.set("rec.graded", torch.tensor([[2, 0, 1]]))
    result = evaluator.evaluate(struct)
    # ranked grades 2, 0, 1 against the ideal 2, 1, 0; gain 2^g - 1
    ideal = [3 * discount(1), 3 * discount(1) + 1 * discount(2), 3 * discount(1) + 1 * discount(2)]
    assert result["gndcg@1"] == pytest.approx(1.0)
    assert result["gndcg@2"] == pytest.approx(3 / ideal[1], abs=1e-4)
    assert result["gndcg"] == pytest.approx((3 + 1 * discount(3)) / ideal[2], abs=1e-4)


def test_graded_ndcg_outside_the_list_protocols_says_how_to_use_it():
    with pytest.raises(ValueError, match="list_eval"):
        GradedNDCG({"topk": [10], "metric_decimal_place": 4}).calculate_metric(DataStruct())


def test_rank_lists_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, -INF], [0.3, 0.2, 0.1, 0.0]])
    grades = torch.tensor([[0, 2, 1, 0], [0, 0, 0, 0]])  # the second user has nothing relevant
    result = rank_lists(scores, grades, [1, 2])
    # user 1 ranks items 0, 2, 1: grades 0, 1, 2; two relevant items
    assert result["ndcg@1"] == 0.0
    assert result["ndcg@2"] == pytest.approx(discount(2) / (discount(1) + discount(2)), abs=1e-4)
    assert result["recall@2"] == pytest.approx(0.5)
    assert result["gndcg@2"] == pytest.approx(1 * discount(2) / (3 * discount(1) + 1 * discount(2)), abs=1e-4)
    assert result["gndcg"] == pytest.approx(
        (discount(2) + 3 * discount(3)) / (3 * discount(1) + discount(2)), abs=1e-4
    )


def test_list_auc_counts_the_right_pairs_of_each_users_listed_items_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5, -INF, 0.7], [0.3, 0.2, 0.1, 0.0, -INF], [0.4, 0.6, 0.5, 0.1, 0.3]])
    grades = torch.tensor([[0, 2, 1, 0, 1], [1, 1, 2, 1, 0], [1, 0, 0, 0, 0]])
    listed = torch.tensor([[True, True, True, False, True], [True, True, True, True, False], [True] * 5])
    rows = {}
    result = rank_lists(scores, grades, [2], users=np.array([7, 8, 9]), per_user=rows, listed=listed)
    # user 7 ranks 0 (grade 0), 4 (1), 2 (1), 1 (2); the padding is no item: its one non-relevant
    # item is above all three relevant ones, AUC 0. User 8's listed items are all relevant: no AUC.
    # User 9 ranks 1, 2, 0 (relevant), 4, 3: two of the four pairs right.
    users, values = rows["auc"]
    assert users.tolist() == [7, 9] and values.tolist() == [0.0, 0.5]
    assert result["auc"] == pytest.approx(0.25)
    # Without the listed mask the padding would count as a non-relevant item ranked last.
    assert rank_lists(scores[:1], grades[:1], [2])["auc"] == pytest.approx(0.5)


def test_tied_scores_are_not_ranked_by_column():
    # Index order would rank the first ten columns (a list's test items, the earliest-numbered items) on top.
    relevant = torch.zeros(10, 100, dtype=torch.bool)
    relevant[torch.arange(10), torch.arange(10)] = True
    result = stratum_metrics(torch.zeros(10, 100), torch.zeros(10, 100, dtype=torch.bool), relevant, [10])
    assert result["recall@10"] < 0.5
    grades = relevant.long()
    assert rank_lists(torch.zeros(10, 100), grades, [10])["recall@10"] == result["recall@10"]


def test_rank_lists_pads_lists_shorter_than_the_cutoff():
    result = rank_lists(torch.tensor([[0.2, 0.8]]), torch.tensor([[1, 0]]), [5])
    assert result["recall@5"] == 1.0
    assert result["ndcg@5"] == pytest.approx(discount(2), abs=1e-4)


@pytest.mark.parametrize("share, head", [(0.5, [1]), (0.6, [1, 2]), (1.0, [1, 2, 3, 4])])
def test_head_items_hold_the_share_of_training_counts(share, head):
    counts = np.array([0, 50, 30, 10, 10])
    assert np.flatnonzero(head_items(counts, share)).tolist() == head


def test_stratum_metrics_count_only_the_stratum_and_remove_the_other_strata_positives():
    # As popularity_strata_evaluation calls it: item 0 is the padding id, masked with the history.
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    history = torch.tensor([[True, True, False, False, False]])  # item 1: a training item
    positives = torch.tensor([[False, False, True, False, True]])  # test items 2 (head) and 4 (tail)
    head = torch.tensor([False, True, True, False, False])
    head_result = stratum_metrics(scores, history | (positives & ~head), positives & head, [1])
    assert head_result["ndcg@1"] == 1.0  # item 2 ranks first once item 1 is masked
    tail_result = stratum_metrics(scores, history | (positives & head), positives & ~head, [1, 2])
    # item 2 (a head positive) is removed: the ranking is 3, 4, ...
    assert tail_result["ndcg@1"] == 0.0
    assert tail_result["ndcg@2"] == pytest.approx(discount(2), abs=1e-4)


def tiny_splits(tiny, **options):
    config = Config(model="BPR", dataset=tiny["dataset"], config_file_list=tiny["config_file_list"],
                    config_dict={**tiny["config_dict"], **options})
    train, valid, test = data_preparation(config, create_dataset(config))
    return config, [train._dataset, valid._dataset, test._dataset]


@pytest.mark.parametrize("protocol", ["exposed", "exposed_unselected"])
def test_exposed_lists_hold_the_test_items_graded_by_relevance_threshold(tiny, protocol):
    # exposed: every test item; exposed_unselected: those the user has in no earlier split.
    config, splits = tiny_splits(tiny, list_eval="exposed", relevance_threshold=4)
    users, items, grades = candidate_lists(config, splits, protocol)
    test = splits[2].inter_feat
    for row, user in enumerate(users.tolist()):
        seen = set()
        for split in splits[:2]:
            seen |= set(split.inter_feat["item_id"][split.inter_feat["user_id"] == user].tolist())
        mine = test["user_id"] == user
        expected = {
            item: max(0, int(rating) - 3)
            for item, rating in zip(test["item_id"][mine].tolist(), test["rating"][mine].tolist())
            if protocol == "exposed" or item not in seen
        }
        got = {item: grade for item, grade in zip(items[row].tolist(), grades[row].tolist()) if item != 0}
        assert got == expected


def test_validation_lists_hold_the_validation_items(tiny):
    config, splits = tiny_splits(tiny, list_eval="exposed", relevance_threshold=4)
    users, items, grades = candidate_lists(config, splits[:2])
    valid = splits[1].inter_feat
    assert sorted(users.tolist()) == sorted(set(valid["user_id"].tolist()))
    for row, user in enumerate(users.tolist()):
        mine = valid["user_id"] == user
        expected = {item: max(0, int(rating) - 3)
                    for item, rating in zip(valid["item_id"][mine].tolist(), valid["rating"][mine].tolist())}
        assert {item: grade for item, grade in zip(items[row].tolist(), grades[row].tolist()) if item != 0} == expected


@pytest.mark.parametrize("name", ["TwoTowerSplit", "BPR"])
def test_a_list_valid_metric_scores_validation_by_the_list_protocol_on_the_validation_split(tiny, name, monkeypatch):
    tiny["config_dict"].update({"list_eval": "exposed", "relevance_threshold": 4, "valid_metric": "exposed:ndcg@5",
                                "epochs": 3})
    built = []
    monkeypatch.setattr(trainer_module, "candidate_lists", lambda *args: built.append(args) or candidate_lists(*args))
    result = run_recbole_endo(model=name, **tiny)
    assert len(built) == 1  # three validations, the lists built once
    assert set(result["best_valid_result"]) >= {"exposed:ndcg@5", "exposed:gndcg"}
    assert result["best_valid_score"] == result["best_valid_result"]["exposed:ndcg@5"]
    # the best checkpoint, scored again by the protocol on (train, valid), gives the same score
    config, model, _, train_data, valid_data, _ = load_data_and_model(result["checkpoint"])
    again = list_evaluation(config, model.eval(), [train_data._dataset, valid_data._dataset])
    assert again["exposed:ndcg@5"] == pytest.approx(result["best_valid_score"], abs=1e-4)


@pytest.mark.parametrize("valid_metric, list_eval", [("exposed:ndcg@5", "none"), ("sampled:ndcg@5", "exposed"),
                                                     ("exposed:ndcg@7", "exposed"),
                                                     ("exposed_unselected:ndcg@5", "exposed")])
def test_a_list_valid_metric_of_another_protocol_or_cutoff_is_refused(tiny, valid_metric, list_eval):
    tiny["config_dict"].update({"list_eval": list_eval, "valid_metric": valid_metric})
    with pytest.raises(ValueError, match=f"'valid_metric' is '{valid_metric}'"):
        run_recbole_endo(model="BPR", **tiny)


def test_sampled_lists_add_seeded_never_interacted_negatives(tiny):
    config, splits = tiny_splits(tiny, list_eval="sampled", list_negatives=5)
    users, items, grades = candidate_lists(config, splits)
    again = candidate_lists(config, splits)
    assert torch.equal(items, again[1])
    interacted = {}
    for split in splits:
        for user, item in zip(split.inter_feat["user_id"].tolist(), split.inter_feat["item_id"].tolist()):
            interacted.setdefault(user, set()).add(item)
    for row, user in enumerate(users.tolist()):
        negatives = [item for item, grade in zip(items[row].tolist(), grades[row].tolist()) if grade == 0 and item != 0]
        assert len(negatives) == 5
        assert not set(negatives) & interacted[user]
        assert set(grades[row].tolist()) <= {0, 1, 2}


def test_unknown_list_protocol_names_the_option(tiny):
    with pytest.raises(ValueError, match="'list_eval'"):
        run_recbole_endo(model="BPR", **{**tiny, "config_dict": {**tiny["config_dict"], "list_eval": "random"}})


def run_splits(monkeypatch):
    """Filled, when the next run builds them, with its (train, valid, test) split datasets."""
    splits = []

    def preparing(config, dataset):
        loaders = data_preparation(config, dataset)
        splits[:] = [loader._dataset for loader in loaders]
        return loaders

    monkeypatch.setattr(quick_start, "data_preparation", preparing)
    return splits


def ratings_by_user(split):
    """``{user: {item: rating}}`` of a split's rows."""
    inter = split.inter_feat
    by_user = {}
    for user, item, rating in zip(inter["user_id"].tolist(), inter["item_id"].tolist(), inter["rating"].tolist()):
        by_user.setdefault(user, {})[item] = rating
    return by_user


def scored_by(monkeypatch, name, user_scores):
    """Every evaluation of model ``name`` (RecBole's full sort, the plugin's protocols) scores a
    user's items ``user_scores(user)``, an ``[n_items]`` tensor; training is the model's own."""

    def full_sort_predict(self, interaction):
        return torch.stack([user_scores(int(user)) for user in interaction[self.USER_ID]]).to(self.device)

    monkeypatch.setattr(get_model(name), "full_sort_predict", full_sort_predict)


def hand_head(train, head_share):
    """The head by hand: the fewest most-trained items that hold ``head_share`` of the training rows."""
    ranked = Counter(train.inter_feat["item_id"].tolist()).most_common()
    total = sum(count for _, count in ranked)
    n_head = next(n for n in range(1, len(ranked) + 1) if sum(count for _, count in ranked[:n]) >= head_share * total)
    assert ranked[n_head - 1][1] > ranked[n_head][1]  # no tie at the boundary: no tie-break decides the head
    return {item for item, _ in ranked[:n_head]}


HEAD_SHARE = 0.5  # on the tiny split: 14 items, the 14th above the 15th; a user has test items in both strata


@pytest.mark.parametrize("scoring", ["oracle", "anti_oracle", "head_only", "tail_first"])
@pytest.mark.parametrize("name", ["TwoTowerSplit", "BPR"])
def test_runs_score_each_users_own_test_items_by_the_extra_protocols(name, scoring, tiny, monkeypatch):
    """The model's scores are replaced by ones built from the run's own split; with each of them
    the sampled list protocol and the head/tail strata give values known by hand:

    - ``oracle``: the user's test items score 1 + rating, every other item 0. Each list and each
      stratum ranks its relevant items first, the better rated first: every metric is 1.
    - ``anti_oracle``: the test items score -(1 + rating). Every list has its 20 negatives and
      every stratum more than 20 other items above them: every metric at a cutoff is 0, and the
      sampled lists' graded NDCG over the whole list is, by hand, each user's test grades at ranks
      21, 22 (the lower grade first) against the ideal order.
    - ``head_only``: the head test items (the head counted by hand from the training split) score
      as the oracle's, the tail test items as the anti-oracle's: every head metric is 1, every tail
      metric 0, as only the hand-counted head gives.
    - ``tail_first``: tail test items 10 + rating, head test items 1 + rating: the head stratum
      ranks its items first only if the tail's test items leave its ranking: every metric is 1.

    ``head:items`` is the hand-counted head's size in every run."""
    splits = run_splits(monkeypatch)
    head_of = {}

    def user_scores(user):
        if not head_of:
            head_of["head"] = hand_head(splits[0], HEAD_SHARE)
            head_of["test"] = ratings_by_user(splits[2])
        scores = torch.zeros(splits[0].item_num)
        for item, rating in head_of["test"].get(user, {}).items():
            head = item in head_of["head"]
            scores[item] = {"oracle": 1 + rating, "anti_oracle": -1 - rating, "head_only": 1 + rating if head else -1 - rating,
                            "tail_first": 1 + rating if head else 10 + rating}[scoring]
        return scores

    scored_by(monkeypatch, name, user_scores)
    options = {**tiny["config_dict"], "list_eval": "sampled", "list_negatives": 20, "head_share": HEAD_SHARE}
    result = run_recbole_endo(model=name, **{**tiny, "config_dict": options})["test_result"]
    train, valid, test = splits
    head = hand_head(train, HEAD_SHARE)
    assert result["head:items"] == len(head)
    sampled = {f"sampled:{metric}@{k}" for metric in ("ndcg", "recall", "gndcg") for k in (5, 10)} | {"sampled:gndcg"}
    strata = {f"{stratum}:{metric}@{k}" for stratum in ("head", "tail") for metric in ("ndcg", "recall") for k in (10, 20)}
    assert set(result) >= sampled | strata
    heads = {key: result[key] for key in strata if key.startswith("head:")}
    tails = {key: result[key] for key in strata if key.startswith("tail:")}
    test_items = ratings_by_user(test)
    if scoring == "oracle":
        assert result["ndcg@10"] == 1.0  # RecBole's own full sort, as a check of the oracle
        assert {key: result[key] for key in sampled | strata} == dict.fromkeys(sampled | strata, 1.0)
    elif scoring == "anti_oracle":
        assert result["ndcg@10"] == 0.0
        at_cutoffs = (sampled - {"sampled:gndcg"}) | strata
        assert {key: result[key] for key in at_cutoffs} == dict.fromkeys(at_cutoffs, 0.0)
        interacted = {}
        for split in splits:
            for user, ratings in ratings_by_user(split).items():
                interacted.setdefault(user, set()).update(ratings)
        values = []
        for user, ratings in test_items.items():
            grades = sorted(2 if rating >= 3 else 1 for rating in ratings.values())  # grade_thresholds [3]
            negatives = min(20, train.item_num - 1 - len(interacted[user]))
            dcg = sum((2**grade - 1) * discount(negatives + 1 + at) for at, grade in enumerate(grades))
            idcg = sum((2**grade - 1) * discount(1 + at) for at, grade in enumerate(reversed(grades)))
            values.append(dcg / idcg)
        assert result["sampled:gndcg"] == pytest.approx(sum(values) / len(values), abs=1e-4)
    elif scoring == "head_only":
        assert heads == dict.fromkeys(heads, 1.0) and tails == dict.fromkeys(tails, 0.0)
    else:
        # the check needs a user whose test items are in both strata (the tiny split has one)
        assert any(set(ratings) & head and set(ratings) - head for ratings in test_items.values())
        assert heads == dict.fromkeys(heads, 1.0) and tails == dict.fromkeys(tails, 1.0)


def test_recbole_non_accuracy_metrics_match_a_hand_computation(tiny, monkeypatch):
    """RecBole's AveragePopularity, GiniIndex, ItemCoverage and TailPercentage through the plugin's
    runner (its collector passes them the training counts and the number of items). The model
    ranks every user's items in one fixed order, the least trained first (ties: lower id first), so
    each test user's top 10 is the first 10 items of that order outside their training and
    validation items (RecBole's full sort masks those). By hand, from the split and RecBole's
    definitions: AveragePopularity@10 is the users' mean of their items' mean training count;
    ItemCoverage@10 the recommended items over the 61 item ids (RecBole counts the padding id);
    GiniIndex@10 sum_i (2i - |I| - 1) P(i) / (|I| sum_i P(i)) over the items' times recommended
    P, non-decreasing, with |I| = 61; TailPercentage@10 the users' mean share of tail items, the
    tail being the 10% (tail_ratio's default) least-trained items among those trained, ties by
    id."""
    splits = run_splits(monkeypatch)
    fixed = []

    def user_scores(user):
        if not fixed:  # every user the same scores: an item's training count, then its id, the smaller the higher
            train_counts = Counter(splits[0].inter_feat["item_id"].tolist())
            n_items = splits[0].item_num
            fixed.append(-torch.tensor([train_counts[item] * n_items + item for item in range(n_items)], dtype=torch.float))
        return fixed[0]

    scored_by(monkeypatch, "BPR", user_scores)
    metrics = ["NDCG", "AveragePopularity", "GiniIndex", "ItemCoverage", "TailPercentage"]
    options = {**tiny["config_dict"], "metrics": metrics}
    result = run_recbole_endo(model="BPR", **{**tiny, "config_dict": options})["test_result"]
    train, valid, test = splits
    counts = Counter(train.inter_feat["item_id"].tolist())
    n_items = train.item_num
    assert n_items == 61  # 60 items and the padding id
    order = sorted(range(1, n_items), key=lambda item: (counts[item], item))
    trained, valid_items = ratings_by_user(train), ratings_by_user(valid)
    tops = []
    for user in sorted(ratings_by_user(test)):
        seen = set(trained.get(user, {})) | set(valid_items.get(user, {}))
        tops.append([item for item in order if item not in seen][:10])
    assert len(tops) == 40
    average_popularity = sum(sum(counts[item] for item in top) / 10 for top in tops) / len(tops)
    recommended = Counter(item for top in tops for item in top)
    coverage = len(recommended) / n_items
    times = sorted(recommended.get(item, 0) for item in range(n_items))
    gini = sum((2 * i - n_items - 1) * p for i, p in enumerate(times, start=1)) / (n_items * sum(times))
    ranked_trained = sorted(counts, key=lambda item: (counts[item], item))
    tail = set(ranked_trained[: max(int(len(ranked_trained) * 0.1), 1)])
    tail_percentage = sum(len(tail.intersection(top)) / 10 for top in tops) / len(tops)
    assert 0 < tail_percentage < 1 and len(recommended) > 10  # values a wrong tail or list could miss
    assert result["averagepopularity@10"] == pytest.approx(average_popularity, abs=1e-4)
    assert result["itemcoverage@10"] == pytest.approx(coverage, abs=1e-4)
    assert result["giniindex@10"] == pytest.approx(gini, abs=1e-4)
    assert result["tailpercentage@10"] == pytest.approx(tail_percentage, abs=1e-4)


def test_ml100k_keeps_raw_ratings_for_grades():
    config = Config(model="TwoTowerSplit", dataset="ml-100k")
    assert config["normalize_all"] is False


@pytest.mark.parametrize("model, options, option", [
    ("TwoTowerSplit", {}, "'grade_thresholds'"),
    ("BPR", {"list_eval": "exposed"}, "'list_eval'"),
])
def test_grades_on_normalised_ratings_are_refused(model, options, option, tiny):
    config_dict = {**tiny["config_dict"], "normalize_all": True, **options}
    with pytest.raises(ValueError, match=f"{option}.*normalize_all"):
        run_recbole_endo(model=model, **{**tiny, "config_dict": config_dict})


@pytest.mark.parametrize(
    "options, fault",
    [
        ({"list_eval": "sampeld"}, "'list_eval'"),
        ({"cold_eval": "items"}, "'cold_eval'"),
        ({"head_share": 1.5}, "'head_share'"),
        ({"list_eval": "sampled", "list_topk": [0, 5]}, "'list_topk'"),
        ({"list_eval": "exposed", "relevance_threshold": "four"}, "'relevance_threshold'"),
        ({"exposed_unselected": True}, "'exposed_unselected' is True.*list_eval: exposed"),
        ({"list_eval": "exposed", "exposed_unselected": "yes"}, "'exposed_unselected'"),
    ],
)
def test_bad_protocol_options_are_refused_before_training(tiny, monkeypatch, options, fault):
    from recbole_endo.trainer import PluginTrainerMixin

    monkeypatch.setattr(PluginTrainerMixin, "fit", lambda *args, **kwargs: pytest.fail("trained before refusing"))
    tiny["config_dict"].update(options)
    with pytest.raises(ValueError, match=fault):
        run_recbole_endo(model="BPR", **tiny)
