import logging
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from recbole_endo import Config, EndoDecouple
from recbole_endo.quick_start import build


def fit(tiny, **options):
    tiny["config_dict"].update({"learning_rate": 0.01, **options})
    config = Config(model="EndoDecouple", **tiny)
    _, model, trainer, (train_data, valid_data, _) = build(config)
    trainer.fit(train_data, valid_data, saved=False)
    return model, trainer


def test_trains_with_every_component_finite_and_total_loss_falling(tiny, caplog):
    caplog.set_level(logging.INFO)
    model, trainer = fit(tiny)
    assert isinstance(model, EndoDecouple)
    assert trainer.train_loss_dict[1] < trainer.train_loss_dict[0]
    expected = {"rank"} | {
        f"{entity}_{name}"
        for entity in ("user", "item")
        for name in (
            "stage1", "side_ssl", "atom_ssl", "side_ssl_fake_share", "atom_ssl_fake_share", "cos_mean", "cos_min",
            "inside_margin",
        )
    }
    for epoch in (0, 1):
        components = trainer.loss_component_history[epoch]
        assert set(components) == expected
        assert all(math.isfinite(value) for value in components.values())
    assert "item_atom_ssl=" in caplog.text and "user_cos_min=" in caplog.text

    trainer.tensorboard.flush()
    events = EventAccumulator(trainer.tensorboard.log_dir)
    events.Reload()
    assert {f"Loss/{name}" for name in expected} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("Loss/item_atom_ssl")] == [0, 1]


@pytest.mark.parametrize(
    "switch, absent",
    [
        ({"stage1_weight": 0}, "stage1"),
        ({"side_ssl_weight": 0}, "side_ssl"),
        ({"atom_ssl_weight": 0}, "atom_ssl"),
    ],
)
def test_each_auxiliary_loss_can_be_switched_off(tiny, switch, absent):
    _, trainer = fit(tiny, epochs=1, **switch)
    components = trainer.loss_component_history[0]
    assert f"user_{absent}" not in components and f"item_{absent}" not in components
    assert "rank" in components


@pytest.mark.parametrize("orthogonalize", [True, False])
def test_atom_ssl_views_are_the_atom_part_orthogonal_to_the_side_or_the_atom_itself(tiny, orthogonalize):
    # No view dropout and an identity head: the views are what the atom SSL compares.
    tiny["config_dict"].update({"ssl_dropout": 0.0, "orthogonalize": orthogonalize})
    _, model, _, _ = build(Config(model="EndoDecouple", **tiny))
    tower = model.towers["item"].train()
    tower.heads["atom"] = torch.nn.Identity()
    ids = torch.tensor([1, 2, 3])
    _, terms = model.decoupling.tower_terms(tower, ids)
    views = terms.problems["atom_ssl"].views.detach()
    with torch.no_grad():
        embedded = tower.embed(ids)
        s, a = (F.normalize(tower.branch(group, embedded[group]), dim=-1) for group in ("side", "atom"))
    if orthogonalize:  # norm(a - (a.s) s), worked out here from the branches
        expected = a - (a * s).sum(-1, keepdim=True) * s
        expected = expected / expected.norm(dim=-1, keepdim=True)
        assert torch.allclose((views * s).sum(-1), torch.zeros(2, 3), atol=1e-5)
    else:
        expected = a
    assert torch.allclose(views, expected.expand(2, -1, -1), atol=1e-5)


def test_field_views_train_and_views_of_one_row_know_complementary_fields(tiny):
    model, trainer = fit(tiny, epochs=1, ssl_views="fields")
    assert math.isfinite(trainer.train_loss_dict[0])
    tower = model.towers["user"]  # three side fields: age, gender, favourite
    views = tower.views("side", torch.ones(50, 3, 8))
    kept = views.abs().sum(-1) > 0  # [view, row, field]
    assert torch.equal(kept[0], ~kept[1])  # every field is known to exactly one view
    assert kept.any(-1).all()  # and neither view of any row is empty


def test_dropout_views_drop_each_entry_at_the_rate_and_scale_the_kept_ones_as_dropout_does(tiny):
    _, model, _, _ = build(Config(model="EndoDecouple", **tiny))
    tower = model.towers["user"]
    tower.ssl_dropout = 0.25
    torch.manual_seed(0)
    views = tower.views("side", torch.ones(2000, 3, 8))
    assert views.shape == (2, 2000, 3, 8)
    kept = views != 0
    assert torch.equal(views[kept], torch.full((int(kept.sum()),), 1 / 0.75))  # inverted dropout's scale
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01  # 96,000 entries: the rate's std is 0.0014
    assert 0.2 < (kept[0] != kept[1]).float().mean().item() < 0.55  # independent views: 2 * 0.25 * 0.75


def test_side_orthogonal_ranking_scores_scale_times_side_plus_weighted_orthogonal_atom(tiny):
    model, trainer = fit(tiny, epochs=1, rank_representation="side_orthogonal")
    assert math.isfinite(trainer.train_loss_dict[0])
    tower = model.towers["item"].eval()
    with torch.no_grad():
        tower.rank_log_scale.fill_(math.log(3.0))
        tower.atom_log_weight.fill_(math.log(0.5))
        ids = torch.tensor([1, 2, 3])
        embedded = tower.embed(ids)
        s = F.normalize(tower.branch("side", embedded["side"]), dim=-1)
        a = F.normalize(tower.branch("atom", embedded["atom"]), dim=-1)
        perp = a - (a * s).sum(-1, keepdim=True) * s
        expected = 3.0 * (s + 0.5 * perp / perp.norm(dim=-1, keepdim=True))
        assert torch.allclose(tower(ids), expected, atol=1e-5)
    assert not hasattr(tower, "output")


def test_unknown_rank_representation_is_refused_naming_the_option(tiny):
    tiny["config_dict"]["rank_representation"] = "atom"
    with pytest.raises(ValueError, match="'rank_representation' must be output or side_orthogonal"):
        build(Config(model="EndoDecouple", **tiny))


def test_unknown_ssl_views_are_refused_naming_the_option(tiny):
    tiny["config_dict"]["ssl_views"] = "masks"
    with pytest.raises(ValueError, match="'ssl_views' must be dropout or fields"):
        build(Config(model="EndoDecouple", **tiny))


@pytest.mark.parametrize("margin, inside", [(2.0, 1.0), (-1.0, 0.0)])
def test_inside_margin_is_the_share_of_rows_the_stage1_loss_acts_on(tiny, margin, inside):
    # cos(a, s) lies in [-1, 1]: every row is inside a margin of 2, none inside -1 (loss 0 there)
    _, trainer = fit(tiny, epochs=1, stage1_margin=margin)
    components = trainer.loss_component_history[0]
    for entity in ("user", "item"):
        assert components[f"{entity}_inside_margin"] == pytest.approx(inside)
        assert (components[f"{entity}_stage1"] == 0.0) == (inside == 0.0)


@pytest.mark.parametrize("sample_weight", ["ipw", "endo"])
def test_sample_weights_reach_the_ranking_loss_as_the_documented_map_with_mean_one_and_no_gradient(tiny, monkeypatch, sample_weight):
    # ipw, eta 1: 1 / (1 + n_i), n_i the item's training count; endo, eta 2: exp(-2 cos(a, s)) of
    # the positive item; each divided by its batch mean.
    eta = {"ipw": ("ipw_eta", 1.0), "endo": ("endo_eta", 2.0)}[sample_weight]
    tiny["config_dict"].update({"sample_weight": sample_weight, eta[0]: eta[1]})
    _, model, _, (train_data, _, _) = build(Config(model="EndoDecouple", **tiny))
    captured = {}
    ranking_loss = model.ranking_loss

    def capture(user_repr, item_repr, grades, lower=None, sample_weight=None):
        captured["weight"] = sample_weight
        return ranking_loss(user_repr, item_repr, grades, lower, sample_weight)

    monkeypatch.setattr(model, "ranking_loss", capture)
    batch = next(iter(train_data))
    model.train()
    model.calculate_loss(batch)
    weight = captured["weight"]
    if sample_weight == "ipw":
        counts = Counter(train_data._dataset.inter_feat["item_id"].tolist())  # counted from the split's rows
        raw = torch.tensor([1 / (1 + counts[item]) for item in batch["item_id"].tolist()])
    else:
        _, terms = model.auxiliary("item", batch["item_id"])
        assert terms.cos.requires_grad
        raw = torch.exp(-2.0 * terms.cos.detach())
    assert not weight.requires_grad
    assert torch.allclose(weight, raw / raw.mean(), rtol=1e-5)


def test_unknown_sample_weight_is_refused_naming_the_option(tiny):
    tiny["config_dict"]["sample_weight"] = "propensity"
    with pytest.raises(ValueError, match="'sample_weight'.*none, ipw, endo"):
        build(Config(model="EndoDecouple", **tiny))


@pytest.mark.parametrize(
    "line, message",
    [
        ('stage1_margin: "0.5"', r"'stage1_margin' must be a number in \[-1, 2\], got '0.5' \(str\)"),
        ("ssl_temperature: -0.1", r"'ssl_temperature' must be a number in \(0, inf\]"),
        ("ssl_dropout: 1.5", r"'ssl_dropout' must be a number in \[0, 1\)"),
        ("ssl_dropout: 1", r"'ssl_dropout' must be a number in \[0, 1\)"),
        ("side_ssl_weight: -1", r"'side_ssl_weight'"),
        ("ssl_batch_size: 1.5", r"'ssl_batch_size' must be an integer"),
        ("mlp_hidden_size: [64, 0]", r"'mlp_hidden_size' must be a list of positive integers"),
        ('grade_thresholds: "3"', r"'grade_thresholds' must be a list"),
    ],
)
def test_bad_yaml_values_are_refused_naming_the_option(tiny, tmp_path, line, message):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(line + "\n")
    tiny["config_file_list"].append(str(bad_yaml))
    with pytest.raises(ValueError, match=message):
        build(Config(model="EndoDecouple", **tiny))


def test_non_finite_loss_component_stops_training_naming_it(tiny, monkeypatch):
    config = Config(model="EndoDecouple", **tiny)
    _, model, trainer, (train_data, valid_data, _) = build(config)
    calculate_loss = model.calculate_loss

    def diverging(interaction):
        loss = calculate_loss(interaction)
        model.loss_components["item_side_ssl"] = float("nan")
        return loss

    monkeypatch.setattr(model, "calculate_loss", diverging)
    with pytest.raises(ValueError, match="loss component 'item_side_ssl' is nan"):
        trainer.fit(train_data, valid_data, saved=False)


def test_side_ssl_sees_views_of_the_normalised_side_representation(tiny):
    """Scaling the side branch leaves s = norm(side branch), so the side SSL, unchanged."""
    _, model, _, (train_data, _, _) = build(Config(model="EndoDecouple", **tiny))
    model.train()
    batch = next(iter(train_data))

    def side_ssl():
        torch.manual_seed(0)  # the same dropout views each time
        model.calculate_loss(batch)
        return model.loss_components["item_side_ssl"].item()

    before = side_ssl()
    last = [module for module in model.towers["item"].mlps["side"].modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(3.0)
        last.bias.mul_(3.0)
    assert side_ssl() == pytest.approx(before, rel=1e-5)


@pytest.mark.parametrize("dropout_prob", [0.0, 0.2])
def test_with_every_decoupling_term_off_and_the_same_weights_it_computes_what_two_tower_split_does(tiny, dropout_prob):
    tiny["config_dict"].update({"dropout_prob": dropout_prob, "within_user_weight": 1.0})
    _, split, _, (train_data, _, _) = build(Config(model="TwoTowerSplit", **tiny))
    off = {"stage1_weight": 0, "side_ssl_weight": 0, "atom_ssl_weight": 0}
    _, endo, _, _ = build(Config(model="EndoDecouple", **{**tiny, "config_dict": {**tiny["config_dict"], **off}}))
    missing, unexpected = endo.load_state_dict(split.state_dict(), strict=False)
    assert not unexpected and all(".heads." in key for key in missing)  # only the unused SSL heads
    batch = next(iter(train_data))
    losses = []
    for model in (split, endo):
        torch.manual_seed(0)  # the same dropout masks and within-user draws
        losses.append(model.calculate_loss(batch))
    if dropout_prob == 0.0:
        assert torch.allclose(losses[0], losses[1], atol=1e-6)
    query = Interaction({"user_id": torch.tensor([1, 2, 3])})
    assert torch.allclose(split.eval().full_sort_predict(query), endo.eval().full_sort_predict(query), atol=1e-6)


@pytest.mark.parametrize("dropout_prob, ssl_views", [(0.3, "dropout"), (0.3, "fields"), (0.0, "dropout")])
def test_fake_negatives_of_repeated_entities_and_equal_sides_are_masked_whatever_the_dropout(tiny, dropout_prob, ssl_views):
    """u1 and u2 have the same side fields (26-35, F, romance), as have u3 and u5 (18-25, M,
    romance); u1 and i1 come twice. Each SSL problem's InfoNCE must leave exactly those pairs
    out, as a hand computation over the captured views does."""
    tiny["config_dict"].update({"dropout_prob": dropout_prob, "ssl_views": ssl_views})
    _, model, _, (train_data, _, _) = build(Config(model="EndoDecouple", **tiny))
    dataset = train_data._dataset
    users = torch.tensor([dataset.token2id("user_id", u) for u in ("u1", "u2", "u1", "u3", "u5", "u4")])
    items = torch.tensor([dataset.token2id("item_id", i) for i in ("i1", "i2", "i1", "i3", "i4", "i5")])
    batch = Interaction({
        "user_id": users, "item_id": items, "neg_item_id": items.flip(0), "rating": torch.full((6,), 4.0)
    })
    captured = {}
    ssl_losses = model.decoupling.ssl_losses

    def capture(problems):
        captured.update(problems)
        return ssl_losses(problems)

    model.decoupling.ssl_losses = capture
    torch.manual_seed(0)
    model.train()
    model.calculate_loss(batch)
    repeated = {(0, 2), (2, 0)}
    same_user_side = {(i, j) for group in ((0, 1, 2), (3, 4)) for i in group for j in group if i != j}
    fake = {
        ("user", "side_ssl"): same_user_side, ("user", "atom_ssl"): repeated,
        ("item", "side_ssl"): repeated, ("item", "atom_ssl"): repeated,
    }
    temperature = model.decoupling.temperature
    for (entity, term), pairs in fake.items():
        name = f"{entity}_{term}"
        assert model.loss_components[f"{name}_fake_share"].item() == pytest.approx(len(pairs) / 30)
        views = F.normalize(captured[entity, term].views.detach(), dim=-1).tolist()
        anchors, positives = views
        cos = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731 (unit vectors)
        losses = []
        for i, anchor in enumerate(anchors):
            kept = [j for j in range(6) if (i, j) not in pairs]
            denominator = sum(math.exp(cos(anchor, positives[j]) / temperature) for j in kept)
            losses.append(-(cos(anchor, positives[i]) / temperature - math.log(denominator)))
        assert model.loss_components[name].item() == pytest.approx(sum(losses) / 6, rel=1e-5)


@pytest.mark.parametrize("side_gradient", [True, False])
def test_atom_ssl_reaches_the_side_branch_only_when_its_side_gradient_is_on(tiny, side_gradient):
    tiny["config_dict"]["atom_ssl_side_gradient"] = side_gradient
    _, model, _, _ = build(Config(model="EndoDecouple", **tiny))
    tower = model.towers["item"].train()
    _, terms = model.decoupling.tower_terms(tower, torch.arange(1, 9))
    # The atom SSL alone: the ranking loss and the other terms reach both branches anyway.
    loss = model.decoupling.ssl_losses({("item", "atom_ssl"): terms.problems["atom_ssl"]})[0]["item", "atom_ssl"]
    side, atom = (list(tower.mlps[group].parameters()) for group in ("side", "atom"))
    gradients = torch.autograd.grad(loss, side + atom, allow_unused=True)
    reached = [any(g is not None and g.abs().sum() > 0 for g in part) for part in (gradients[: len(side)], gradients[len(side):])]
    assert reached == [side_gradient, True]


@pytest.mark.parametrize("shared", [False, True])
def test_shared_projection_heads_are_one_module_whose_parameters_train_once(tiny, shared):
    tiny["config_dict"]["share_projection_heads"] = shared
    _, model, _, _ = build(Config(model="EndoDecouple", **tiny))
    heads = model.towers["item"].heads
    assert (heads["side"] is heads["atom"]) == shared
    # mlp_hidden_size [16, 8], projection 64: a head is Linear(8, 8) and Linear(8, 64)
    head_size = (8 * 8 + 8) + (8 * 64 + 64)
    assert sum(p.numel() for p in heads.parameters()) == head_size * (1 if shared else 2)
