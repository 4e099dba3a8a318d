"""The fast paths: batches without RecBole's feature join for models that read features by id,
towers computed once per evaluation, loss components read once per epoch."""

import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from recbole.model.context_aware_recommender import FM
from recbole.model.general_recommender import BPR, LightGCN
from recbole.model.sequential_recommender import DIN

from recbole_endo import Config, EndoDecouple, TwoTowerConcat, TwoTowerSplit
from recbole_endo.compat.feature_join import reads_joined_features, without_features
from recbole_endo.quick_start import build, run_recbole_endo

FEATURES = ("age", "gender", "favourite", "title", "class", "price")


class GeneralWithFeatures(BPR):
    """A user's own general model: it might read joined features, so it keeps the join."""


def built(tiny, model, **options):
    tiny["config_dict"].update(options)
    return build(Config(model=model, **tiny))


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
    _, _, _, (train_data, valid_data, test_data) = built(tiny, model)
    batch = next(iter(train_data))
    assert {"user_id", "item_id", "neg_item_id", "rating"} <= set(batch.columns)
    assert not {*FEATURES, "neg_title"} & set(batch.columns)
    users, *_ = next(iter(test_data))
    assert list(users.columns) == ["user_id"]
    assert all(data._dataset.join is without_features for data in (train_data, valid_data, test_data))

    _, _, _, (train_data, _, test_data) = built(tiny, model, join_features=True)
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
        built(tiny, "BPR", join_features=value)


def test_user_and_item_towers_are_cached_for_one_evaluation_only(tiny):
    _, model, _, _ = built(tiny, "TwoTowerSplit")
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


def test_loss_components_are_kept_as_tensors_and_logged_as_epoch_means(tiny, monkeypatch):
    _, model, trainer, (train_data, _, _) = built(tiny, "EndoDecouple")
    calculate_loss = model.calculate_loss
    reported = []

    def numbered(interaction):
        """The model's loss, its components kept, plus two whose epoch means are known by hand:
        ``batch``, a tensor holding the batch's number, and ``rows``, a float of its row count."""
        loss = calculate_loss(interaction)
        reported.append(dict(model.loss_components))
        model.loss_components = {
            **model.loss_components, "batch": torch.tensor(float(len(reported) - 1)), "rows": float(len(interaction)),
        }
        return loss

    monkeypatch.setattr(model, "calculate_loss", numbered)
    trainer._train_epoch(train_data, 0)
    assert all(torch.is_tensor(value) and not value.requires_grad for batch in reported for value in batch.values())
    means = trainer.loss_component_history[0]
    assert all(isinstance(value, float) for value in means.values())
    assert set(means) == set(reported[0]) | {"batch", "rows"}
    # tiny: 510 training rows (RecBole's 0.8 of each user's rows, of 600) in batches of 128, so 4
    # batches of 128, 128, 128 and 126 rows. The epoch mean is the mean over batches, each batch
    # once whatever its size: batch numbers 0..3 average 1.5, row counts 510 / 4 = 127.5.
    # (Weighted by rows they would give (128 + 2 * 128 + 3 * 126) / 510 = 1.494 and
    # (3 * 128^2 + 126^2) / 510 = 127.506; the last batch's alone, 3 and 126.)
    assert [len(batch) for batch in train_data] == [128, 128, 128, 126] and len(reported) == 4
    assert means["batch"] == pytest.approx(1.5)
    assert means["rows"] == pytest.approx(127.5)
    for name in reported[0]:  # the model's own components, by the same rule
        assert means[name] == pytest.approx(sum(batch[name].item() for batch in reported) / 4, rel=1e-6), name


def test_a_non_finite_loss_names_its_component_and_batch(tiny, monkeypatch):
    _, model, trainer, (train_data, _, _) = built(tiny, "TwoTowerSplit")
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


def rank_loss_row_by_row(model, batch):
    """The batch's graded BPR worked out one row at a time: each row's user, positive and negative
    item run through their towers alone (a batch of one id), so no row shares a tower call with
    another. tiny.yaml's grade_thresholds [3]: a positive rated 3 or more has grade 2 (gain
    2^2 - 1 = 3), else grade 1 (gain 1); the loss is -sum(gain * log sigmoid(pos - neg)) / sum(gain)
    (every pair weighs its gain, the weights normalised to mean 1; no sample weight)."""
    terms, gains = [], []
    for user, item, negative, rating in zip(batch["user_id"], batch["item_id"], batch["neg_item_id"], batch["rating"]):
        user_repr = model.towers["user"](user.view(1))[0]
        pos, neg = ((user_repr * model.towers["item"](one.view(1))[0]).sum() for one in (item, negative))
        gain = 3.0 if rating >= 3 else 1.0
        terms.append(gain * F.logsigmoid(pos - neg))
        gains.append(gain)
    return -torch.stack(terms).sum() / sum(gains)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["TwoTowerSplit", "TwoTowerConcat", "EndoDecouple"])
def test_towers_run_once_per_distinct_id_with_the_loss_and_gradients_of_every_row_run_alone(tiny, name):
    _, model, _, (train_data, _, _) = built(tiny, name)
    batch = next(iter(train_data))
    items = torch.cat([batch["item_id"], batch["neg_item_id"]])
    assert len(items.unique()) < len(items)  # the batch repeats items: there is something to share
    rows = []
    tower = model.towers["item"]
    embedding = tower.embeddings["atom"] if hasattr(tower, "embeddings") else tower.embedding
    hook = embedding.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    model.train()
    torch.manual_seed(0)  # EndoDecouple's SSL dropout views
    loss = model.calculate_loss(batch)
    loss.backward()
    hook.remove()
    assert rows == [len(items.unique())]  # one item-tower call, each distinct item once
    fast_grads, rank = gradients(model), model.loss_components["rank"]

    model.zero_grad()
    by_hand = rank_loss_row_by_row(model, batch)
    assert torch.allclose(rank, by_hand.detach(), atol=1e-6)
    if name != "EndoDecouple":  # the ranking loss is the whole loss: its gradients, row by row
        by_hand.backward()
        assert torch.allclose(loss.detach(), by_hand.detach(), atol=1e-6)
        hand_grads = gradients(model)
        assert fast_grads.keys() == hand_grads.keys()
        assert all(torch.allclose(fast_grads[key], hand_grads[key], atol=1e-6) for key in hand_grads), [
            key for key in hand_grads if not torch.allclose(fast_grads[key], hand_grads[key], atol=1e-6)
        ]
        return
    # EndoDecouple's decoupling terms cover the batch's rows, a repeated item once per row (its
    # SSL views drawn per row): the whole loss and its gradients are those of the towers run on
    # every row, each row its own "distinct" id.
    model.distinct = lambda ids: (ids, torch.arange(len(ids)))
    model.zero_grad()
    torch.manual_seed(0)
    rows.clear()
    hook = embedding.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    every_row = model.calculate_loss(batch)
    every_row.backward()
    hook.remove()
    assert rows == [len(items)]
    assert torch.allclose(loss.detach(), every_row.detach(), atol=1e-6)
    slow_grads = gradients(model)
    assert fast_grads.keys() == slow_grads.keys()
    assert all(torch.allclose(fast_grads[key], slow_grads[key], atol=1e-6) for key in slow_grads)


def test_towers_with_dropout_run_once_per_distinct_id_its_rows_sharing_one_mask(tiny):
    """With dropout a repeated item still runs through its tower once: its rows share one
    dropout mask (each row's loss keeps its distribution). The item tower sees each distinct item
    once, two rows of one item are equal, and the output differs from the eval-mode one: the
    mask is there."""
    _, model, _, (train_data, _, _) = built(tiny, "TwoTowerSplit", dropout_prob=0.5)
    batch = next(iter(train_data))
    items = torch.cat([batch["item_id"], batch["neg_item_id"]])
    assert len(items.unique()) < len(items)
    tower = model.towers["item"]
    calls = []
    hook = tower.register_forward_hook(lambda module, args, output: calls.append((args[0], output.detach())))
    model.train()
    torch.manual_seed(0)
    model.calculate_loss(batch)
    hook.remove()
    ((ids, outputs),) = calls
    assert torch.equal(ids, items.unique())
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(outputs, tower(ids), atol=1e-4)
