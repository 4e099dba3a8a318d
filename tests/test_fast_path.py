"""The fast paths: batches without RecBole's feature join for models that read features by id,
towers computed once per evaluation, loss components read once per epoch."""

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.context_aware_recommender import FM
from recbole.model.general_recommender import BPR, LightGCN
from recbole.model.sequential_recommender import DIN

from recbole_endo import Config, EndoDecouple, TwoTowerConcat, TwoTowerSplit
from recbole_endo.fast_path import reads_joined_features, without_features
from recbole_endo.quick_start import _build, run_recbole_endo

FEATURES = ("age", "gender", "favourite", "title", "class", "price")


class GeneralWithFeatures(BPR):
    """A user's own general model: it might read joined features, so it keeps the join."""


def build(tiny, model, **options):
    tiny["config_dict"].update(options)
    return _build(Config(model=model, **tiny))


@pytest.mark.parametrize(
    "model_class, reads",
    [
        (TwoTowerSplit, False),
        (TwoTowerConcat, False),
        (EndoDecouple, False),
        (BPR, False),
        (LightGCN, False),
        (FM, True),
        (DIN, True),
        (GeneralWithFeatures, True),
    ],
)
def test_only_models_that_read_features_by_id_skip_the_join(model_class, reads):
    assert reads_joined_features(model_class) is reads


@pytest.mark.parametrize("model", ["TwoTowerSplit", "BPR"])
def test_batches_carry_no_feature_columns_under_auto_and_all_of_them_under_true(tiny, model):
    _, _, _, (train_data, valid_data, test_data) = build(tiny, model)
    batch = next(iter(train_data))
    assert {"user_id", "item_id", "neg_item_id", "rating"} <= set(batch.columns)
    assert not {*FEATURES, "neg_title"} & set(batch.columns)
    users, *_ = next(iter(test_data))
    assert list(users.columns) == ["user_id"]
    assert all(data._dataset.join is without_features for data in (train_data, valid_data, test_data))

    _, _, _, (train_data, _, test_data) = build(tiny, model, join_features=True)
    batch = next(iter(train_data))
    assert {*FEATURES, "neg_title", "neg_price"} <= set(batch.columns)
    users, *_ = next(iter(test_data))
    assert {"age", "gender"} <= set(users.columns)


@pytest.mark.parametrize(
    "model, options",
    [
        ("TwoTowerSplit", {"list_eval": "sampled"}),  # the plugin's list protocol joins through the split too
        ("EndoDecouple", {}),
        ("BPR", {}),
    ],
)
def test_same_seed_gives_identical_results_with_and_without_the_join(tiny, model, options):
    results = []
    for join in ("auto", True):
        config_dict = dict(tiny["config_dict"], join_features=join, **options)
        result = run_recbole_endo(model=model, dataset=tiny["dataset"], config_file_list=tiny["config_file_list"],
                                  config_dict=config_dict, saved=False)
        results.append(result)
    fast, joined = results
    assert fast["test_result"] == joined["test_result"]
    assert fast["best_valid_result"] == joined["best_valid_result"]
    assert fast["best_valid_score"] == joined["best_valid_score"]


@pytest.mark.parametrize("value", [False, "sometimes", 1])
def test_bad_join_features_is_refused_naming_the_option(tiny, value):
    with pytest.raises(ValueError, match="'join_features' must be auto or true"):
        build(tiny, "BPR", join_features=value)


def test_user_and_item_towers_are_cached_for_one_evaluation_only(tiny):
    _, model, _, _ = build(tiny, "TwoTowerSplit")
    users = torch.tensor([1, 2, 3])
    model.eval()
    with torch.no_grad():
        cached = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
        direct = model.towers["user"](users) @ model.towers["item"](torch.arange(model.n_items)).T
        assert torch.allclose(cached, direct, atol=1e-6)
        assert set(model._evaluation_cache) == {"user", "item"}
        model.train()  # as before every weight change
        assert model._evaluation_cache == {}
        for parameter in model.towers["user"].parameters():
            parameter.add_(0.1)
        model.eval()
        after = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
    assert not torch.allclose(cached, after)


def test_loss_components_are_kept_as_tensors_and_logged_as_epoch_means(tiny):
    _, model, trainer, (train_data, _, _) = build(tiny, "EndoDecouple")
    trainer._train_epoch(train_data, 0)
    assert all(torch.is_tensor(value) and not value.requires_grad for value in model.loss_components.values())
    means = trainer.loss_component_history[0]
    assert all(isinstance(value, float) for value in means.values())
    assert set(means) == set(model.loss_components)


def test_a_non_finite_loss_names_its_component_and_batch(tiny, monkeypatch):
    _, model, trainer, (train_data, _, _) = build(tiny, "TwoTowerSplit")
    calculate_loss = model.calculate_loss
    calls = []

    def diverging(interaction):
        loss = calculate_loss(interaction)
        calls.append(None)
        if len(calls) == 2:
            loss = loss * float("inf")
            model.loss_components["rank"] = loss.detach()
        return loss

    monkeypatch.setattr(model, "calculate_loss", diverging)
    with pytest.raises(ValueError, match="loss component 'rank' is inf at epoch 0, batch 1"):
        trainer._train_epoch(train_data, 0)


@pytest.mark.parametrize("model", ["TwoTowerSplit", "TwoTowerConcat", "EndoDecouple"])
def test_towers_run_once_per_distinct_id_with_the_same_loss_and_gradients(tiny, model):
    name = model
    _, model, _, (train_data, _, _) = build(tiny, name)
    assert model.deduplicate
    batch = next(iter(train_data))
    rows = []
    tower = model.towers["item"]
    embedding = tower.embeddings["atom"] if hasattr(tower, "embeddings") else tower.embedding
    hook = embedding.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    results = []
    for deduplicate in (True, False):
        model.deduplicate = deduplicate
        model.zero_grad()
        torch.manual_seed(0)  # the same SSL dropout views
        loss = model.calculate_loss(batch)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    hook.remove()
    items = torch.cat([batch["item_id"], batch["neg_item_id"]])
    # deduplicated: the distinct ids in one call; else every row, in one call (EndoDecouple: the
    # positives, which its auxiliary terms cover, then the others)
    positives, negatives = len(batch["item_id"]), len(batch["neg_item_id"])
    calls = [positives, negatives] if name == "EndoDecouple" else [positives + negatives]
    assert rows == [len(items.unique()), *calls]
    assert len(items.unique()) < len(items)
    (fast_loss, fast_grads), (loss, grads) = results
    assert torch.allclose(fast_loss, loss, atol=1e-6)
    assert fast_grads.keys() == grads.keys()
    assert all(torch.allclose(fast_grads[name], grads[name], atol=1e-6) for name in grads)


def test_towers_with_dropout_run_on_every_row(tiny):
    _, model, _, _ = build(tiny, "TwoTowerSplit", dropout_prob=0.1)
    assert not model.deduplicate
