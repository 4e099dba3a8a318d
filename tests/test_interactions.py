"""train_min_rating: training on the rows rated at least a threshold, the rest of the training split
kept for the sampler's exclusions and the evaluation's history (recbole_endo/data/interactions.py)."""

from collections import Counter

import pytest
import torch

from recbole_endo.config import Config, check_options
from recbole_endo.data.interactions import evaluation_split
from recbole_endo.quick_start import build, run_recbole_endo


def pairs(split):
    return list(zip(split.inter_feat["user_id"].tolist(), split.inter_feat["item_id"].tolist()))


def built(tiny, model="BPR", **options):
    tiny["config_dict"].update(options)
    _, model, _, (train_data, _, _) = build(Config(model=model, **tiny))
    return model, train_data


def test_the_loader_trains_on_the_ratings_at_the_threshold_and_the_evaluation_reads_every_row(tiny):
    _, every_row = built(dict(tiny, config_dict=dict(tiny["config_dict"])))
    _, four_and_more = built(tiny, train_min_rating=4)
    whole = every_row._dataset
    ratings = whole.inter_feat["rating"].tolist()
    expected = sorted(pair for pair, rating in zip(pairs(whole), ratings) if rating >= 4)
    assert 0 < len(expected) < len(ratings)  # the tiny split holds ratings on both sides of 4
    assert sorted(pairs(four_and_more._dataset)) == expected
    assert sorted(pairs(evaluation_split(four_and_more))) == sorted(pairs(whole))
    assert evaluation_split(every_row) is whole  # without the option the loader's own split


def test_a_left_out_rating_is_no_sampled_negative_of_its_user(tiny):
    _, loader = built(tiny, train_min_rating=4)
    rated = set(pairs(evaluation_split(loader)))
    left_out = rated - set(pairs(loader._dataset))
    negatives = [pair for batch in loader for pair in zip(batch["user_id"].tolist(), batch["neg_item_id"].tolist())]
    assert left_out and negatives and not rated.intersection(negatives)


def test_a_model_counts_popularity_over_the_rows_kept(tiny):
    model, loader = built(tiny, model="DICE", train_min_rating=4)
    counts = Counter(loader._dataset.inter_feat["item_id"].tolist())
    expected = torch.tensor([float(counts[item]) for item in range(model.n_items)])
    assert torch.equal(model.item_count, expected)


def test_a_run_trains_and_tests_on_the_rows_kept(tiny):
    tiny["config_dict"].update(train_min_rating=4, epochs=1)
    result = run_recbole_endo(model="BPR", saved=False, **tiny)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("BPR", {"train_min_rating": "high"}, "'train_min_rating' must be a number in [-inf, inf], got 'high' (str)"),
        ("BPR", {"train_min_rating": 4, "normalize_all": True}, "'train_min_rating' compares raw ratings"),
    ],
)
def test_a_bad_threshold_is_named_before_the_data_loads(tiny, model, options, message):
    tiny["config_dict"].update(options)
    with pytest.raises(ValueError) as error:
        check_options(Config(model=model, **tiny))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("SASRec", {"train_min_rating": 4}, "SASRec is a sequential model"),
        ("BPR", {"train_min_rating": 4, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}},
         "the rating field 'rating' (RATING_FIELD), which dataset 'tiny' does not load"),
    ],
)
def test_a_model_or_dataset_without_rated_rows_is_named_before_training(tiny, model, options, message):
    tiny["config_dict"].update(options)
    with pytest.raises(ValueError) as error:
        build(Config(model=model, **tiny))
    assert message in str(error.value)
