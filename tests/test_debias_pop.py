"""The popularity-debiasing models DICE, PDA and MACR: each one's mechanism against a hand
computation on a batch of two or three rows, predict against full_sort_predict, option checks,
and a checkpoint reload through the runner."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from conftest import full_and_pointwise_scores

from recbole_endo import Config
from recbole_endo.model.dice import DICE, distance_correlation
from recbole_endo.model.macr import MACR
from recbole_endo.model.pda import PDA
from recbole_endo.experiments.tune import default_params, read_search_space, search_space_file
from recbole_endo.quick_start import build, load_data_and_model, run_recbole_endo
from recbole_endo.trainer import get_trainer


def built(name, tiny, **options):
    """``(model, trainer, splits)`` of ``name`` on the tiny data with ``options``."""
    config = Config(model=name, **{**tiny, "config_dict": {**tiny["config_dict"], **options}})
    _, model, trainer, splits = build(config)
    return model, trainer, splits


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def vectors(embedding, ids):
    return embedding.weight.detach().double().numpy()[ids]


def training_counts(model, splits):
    """Each item's training interactions, counted from the training split's rows."""
    items = splits[0]._dataset.inter_feat[model.ITEM_ID].tolist()
    return Counter(items)


def dcor_by_hand(x, y):
    """Distance correlation of the rows of x and y, by its definition (V-statistic)."""
    n = len(x)
    a = np.array([[np.linalg.norm(x[j] - x[k]) for k in range(n)] for j in range(n)])
    b = np.array([[np.linalg.norm(y[j] - y[k]) for k in range(n)] for j in range(n)])

    def centred(d):
        return d - d.mean(axis=0, keepdims=True) - d.mean(axis=1, keepdims=True) + d.mean()

    a, b = centred(a), centred(b)
    dcov2_xy, dcov2_xx, dcov2_yy = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return math.sqrt(dcov2_xy) / math.sqrt(math.sqrt(dcov2_xx) * math.sqrt(dcov2_yy))


# --- DICE ---------------------------------------------------------------------------------------


def test_distance_correlation_is_one_for_an_affine_copy_and_matches_its_definition():
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert float(distance_correlation(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-9)
    assert float(distance_correlation(x, y)) == pytest.approx(dcor_by_hand(x.numpy(), y.numpy()), rel=1e-9)
    assert float(distance_correlation(x[:1], y[:1])) == 0.0  # one row: nothing to correlate


def test_distance_correlation_has_the_gradient_of_its_definition_and_none_from_equal_rows():
    # The definition in torch: cdist and the double-centred matrices.
    def by_definition(x, y):
        a, b = torch.cdist(x, x), torch.cdist(y, y)
        a = a - a.mean(0, keepdim=True) - a.mean(1, keepdim=True) + a.mean()
        b = b - b.mean(0, keepdim=True) - b.mean(1, keepdim=True) + b.mean()
        return (a * b).mean().sqrt() / ((a * a).mean().sqrt() * (b * b).mean().sqrt()).sqrt()

    torch.manual_seed(1)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    y[5] = y[4]  # two equal rows: a distance of 0 off the diagonal
    gradients = []
    for function in (distance_correlation, by_definition):
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        function(xs, ys).backward()
        gradients.append((xs.grad, ys.grad))
    assert torch.isfinite(gradients[0][1]).all()
    assert torch.allclose(gradients[0][0], gradients[1][0], rtol=1e-9, atol=1e-12)
    assert torch.allclose(gradients[0][1], gradients[1][1], rtol=1e-9, atol=1e-12)


def test_dice_splits_pairs_by_popularity_and_each_part_learns_its_cause(tiny):
    # Margin 2, no decay. Three users, three triples (user, positive, negative):
    #   row 0: popular P over rare R, the negative less popular   -> O1: conformity prefers P
    #   row 1: rare R over popular P, the negative more popular   -> O2: interest prefers R, conformity P
    #   row 2: two items of the same popularity, within the margin -> the click term only
    weights = {"interest_weight": 0.3, "conformity_weight": 0.7, "discrepancy_weight": 0.5}
    model, _, splits = built("DICE", tiny, pop_margin=2, margin_decay=1.0, loss_decay=1.0, **weights)
    counts = training_counts(model, splits)
    popular, rare = max(counts, key=counts.get), min(counts, key=counts.get)
    assert counts[popular] - counts[rare] > 2
    by_count = {}
    for item, count in sorted(counts.items()):
        by_count.setdefault(count, []).append(item)
    even = next(items for items in by_count.values() if len(items) >= 2)[:2]
    users, pos, neg = [1, 2, 3], [popular, rare, even[0]], [rare, popular, even[1]]
    o1, o2 = model.cause_masks(torch.tensor(pos), torch.tensor(neg), 2)
    assert o1.tolist() == [True, False, False] and o2.tolist() == [False, True, False]

    with torch.no_grad():  # scores three times the initial ones, so each term weighs
        for parameter in model.parameters():
            parameter.mul_(3.0)
    model.train()
    loss = model.calculate_loss(
        Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos), "neg_item_id": torch.tensor(neg)})
    ).item()

    u_int, u_con = vectors(model.user_interest, users), vectors(model.user_conformity, users)
    p_int, p_con = vectors(model.item_interest, pos), vectors(model.item_conformity, pos)
    n_int, n_con = vectors(model.item_interest, neg), vectors(model.item_conformity, neg)
    d_int = [u_int[r] @ p_int[r] - u_int[r] @ n_int[r] for r in range(3)]
    d_con = [u_con[r] @ p_con[r] - u_con[r] @ n_con[r] for r in range(3)]
    click = -sum(log_sigmoid(d_int[r] + d_con[r]) for r in range(3)) / 3
    interest = -log_sigmoid(d_int[1]) / 3  # O2 only; divided by the batch's pairs
    conformity = -(log_sigmoid(d_con[0]) + log_sigmoid(-d_con[1])) / 3  # O1 forward, O2 reversed
    items = sorted(set(pos + neg))
    discrepancy = dcor_by_hand(u_int, u_con) + dcor_by_hand(
        vectors(model.item_interest, items), vectors(model.item_conformity, items)
    )
    by_hand = click + 0.3 * interest + 0.7 * conformity + 0.5 * discrepancy
    assert loss == pytest.approx(by_hand, rel=1e-5)
    # What a loss that put every pair into both cause terms, unreversed, would be off by.
    unsplit = click + 0.3 * -sum(map(log_sigmoid, d_int)) / 3 + 0.7 * -sum(map(log_sigmoid, d_con)) / 3
    assert abs(unsplit + 0.5 * discrepancy - by_hand) > 1e-3


def test_dice_margin_and_cause_weights_decay_per_training_epoch(tiny):
    model, trainer, (train_data, valid_data, _) = built(
        "DICE", tiny, pop_margin=8, margin_decay=0.5, loss_decay=0.8, interest_weight=0.1, conformity_weight=0.2
    )
    assert model.schedule() == (8, 0.1, 0.2)
    trainer.fit(train_data, valid_data, saved=False)  # RecBole's trainer: two epochs, model.train() each
    assert int(model.epochs_started) == 2 and model.epoch == 1
    margin, interest_weight, conformity_weight = model.schedule()
    assert (margin, interest_weight, conformity_weight) == pytest.approx((4.0, 0.08, 0.16))
    # A pair 5 interactions apart is within the first epoch's margin and O1 after two halvings.
    counts = training_counts(model, (train_data,))
    pair = next((i, j) for i in counts for j in counts if counts[i] - counts[j] == 5)
    pos, neg = torch.tensor([pair[0]]), torch.tensor([pair[1]])
    assert [mask.item() for mask in model.cause_masks(pos, neg, 8)] == [False, False]
    model.train()  # the third epoch: margin 2
    assert [mask.item() for mask in model.cause_masks(pos, neg, model.schedule()[0])] == [True, False]



def test_dice_discrepancy_rows_caps_the_rows_of_each_dcor(tiny, monkeypatch):
    import recbole_endo.model.dice as dice

    seen = []

    def recording(x, y):
        seen.append((x.detach().clone(), y.detach().clone()))
        return x.new_zeros(())

    monkeypatch.setattr(dice, "distance_correlation", recording)
    users, pos, neg = [1, 2, 3, 4, 2], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]
    batch = Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos), "neg_item_id": torch.tensor(neg)})
    for rows, expected in ((None, (4, 10)), (3, (3, 3)), (10, (4, 10))):
        model, _, _ = built("DICE", tiny, discrepancy_rows=rows)
        seen.clear()
        model.calculate_loss(batch)
        assert [len(x) for x, _ in seen] == list(expected)
        # each row drawn is one of the batch's distinct users (items), its two embeddings side by side
        for (interest, conformity), table, ids in (
            (seen[0], (model.user_interest, model.user_conformity), set(users)),
            (seen[1], (model.item_interest, model.item_conformity), set(pos + neg)),
        ):
            drawn = [next(i for i in ids if torch.equal(table[0].weight[i].detach(), row)) for row in interest]
            assert len(set(drawn)) == len(drawn)
            assert torch.equal(conformity, table[1].weight[drawn].detach())


# --- PDA ----------------------------------------------------------------------------------------


def elu_plus_one(x):
    return math.exp(x) if x <= 0 else x + 1


def test_pda_trains_on_the_popularity_weighted_score_and_ranks_without_it(tiny):
    model, _, splits = built("PDA", tiny, pop_exponent=0.5)
    counts = training_counts(model, splits)
    top = max(counts.values())
    assert torch.allclose(model.stage_popularity[0, 1:], torch.tensor([counts[i] / top for i in range(1, model.n_items)]))
    popular, rare = max(counts, key=counts.get), min(counts, key=counts.get)
    users, pos, neg = [4, 7], [rare, popular], [popular, rare]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    loss = model.calculate_loss(
        Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos), "neg_item_id": torch.tensor(neg)})
    ).item()
    u, p, n = vectors(model.user_embedding, users), vectors(model.item_embedding, pos), vectors(model.item_embedding, neg)
    m = {item: (counts[item] / top) ** 0.5 for item in (popular, rare)}
    diffs = [elu_plus_one(u[r] @ p[r]) * m[pos[r]] - elu_plus_one(u[r] @ n[r]) * m[neg[r]] for r in range(2)]
    assert loss == pytest.approx(-sum(map(log_sigmoid, diffs)) / 2, rel=1e-5)
    unweighted = [elu_plus_one(u[r] @ p[r]) - elu_plus_one(u[r] @ n[r]) for r in range(2)]
    assert abs(sum(map(log_sigmoid, unweighted)) / 2 - sum(map(log_sigmoid, diffs)) / 2) > 1e-3

    # PD: the deconfounded score ELU'(f(u, i)), the popularity factor gone.
    model.eval()
    pairs = Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos)})
    with torch.no_grad():
        scores = model.predict(pairs).tolist()
    assert scores == pytest.approx([elu_plus_one(u[r] @ p[r]) for r in range(2)], rel=1e-5)


def stage_popularity_by_hand(model, splits, stages):
    inter = splits[0]._dataset.inter_feat
    times, items = inter["timestamp"].tolist(), inter["item_id"].tolist()
    start, end = min(times), max(times)
    stage_of = {t: min(int((t - start) / (end - start) * stages), stages - 1) for t in times}
    counts = [Counter(i for i, t in zip(items, times) if stage_of[t] == s) for s in range(stages)]
    return stage_of, [{i: c[i] / max(c.values()) for i in range(model.n_items)} for c in counts]


def test_pda_local_popularity_weighs_each_interaction_by_its_stage_and_pda_ranks_by_the_last(tiny):
    model, _, splits = built(
        "PDA", tiny, pop_exponent=0.5, popularity_stages=2, predict_method="PDA", adjust_exponent=0.3
    )
    stage_of, popularity = stage_popularity_by_hand(model, splits, 2)
    assert torch.allclose(model.stage_popularity.double(), torch.tensor([[m[i] for i in range(model.n_items)] for m in popularity], dtype=torch.float64), atol=1e-7)
    # The same user and items, once at a stage-0 time and once at a stage-1 time.
    early = min(t for t, s in stage_of.items() if s == 0)
    late = max(t for t, s in stage_of.items() if s == 1)
    item, other = next(
        (i, j) for i in range(1, model.n_items) for j in range(1, model.n_items)
        if popularity[0][i] > 0 and popularity[1][i] > 0 and popularity[0][j] > 0 and popularity[1][j] > 0
        and abs(popularity[0][i] / popularity[0][j] - popularity[1][i] / popularity[1][j]) > 0.2
    )
    batch = Interaction({
        "user_id": torch.tensor([5, 5]), "item_id": torch.tensor([item, item]),
        "neg_item_id": torch.tensor([other, other]), "timestamp": torch.tensor([early, late], dtype=torch.float),
    })
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    loss = model.calculate_loss(batch).item()
    u, p, n = vectors(model.user_embedding, [5])[0], vectors(model.item_embedding, [item])[0], vectors(model.item_embedding, [other])[0]
    diffs = [
        elu_plus_one(u @ p) * popularity[s][item] ** 0.5 - elu_plus_one(u @ n) * popularity[s][other] ** 0.5
        for s in (0, 1)
    ]
    assert loss == pytest.approx(-sum(map(log_sigmoid, diffs)) / 2, rel=1e-5)

    # PDA: ELU'(f(u, i)) times the last stage's popularity to the power adjust_exponent (0.3).
    model.eval()
    users, items = [2, 9, 9], [item, other, 3]
    with torch.no_grad():
        scores = model.predict(Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(items)})).tolist()
    uu, ii = vectors(model.user_embedding, users), vectors(model.item_embedding, items)
    by_hand = [elu_plus_one(uu[r] @ ii[r]) * popularity[1][items[r]] ** 0.3 for r in range(3)]
    assert scores == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("option, value", [("predict_method", "PDA"), ("popularity_stages", 3)])
def test_pda_refuses_stages_or_pda_inference_without_time(tiny, option, value):
    tiny["config_dict"]["load_col"] = {
        "inter": ["user_id", "item_id", "rating"],
        "user": ["user_id", "age", "gender", "favourite"],
        "item": ["item_id", "title", "class", "price"],
    }
    with pytest.raises(ValueError, match=rf"config option '{option}' is .*{value}.*no timestamp field 'timestamp'"):
        built("PDA", tiny, **{option: value})
    built("PDA", tiny)  # PD on the global training popularity needs no time


# --- MACR ---------------------------------------------------------------------------------------


def macr_branches(model, users, items):
    """(y_k, y_i, y_u) by hand: the dot product, and the linear modules' outputs."""
    u, i = vectors(model.user_embedding, users), vectors(model.item_embedding, items)
    w_item = model.item_module[0].weight.detach().double().numpy()[0]
    w_user = model.user_module[0].weight.detach().double().numpy()[0]
    return [(u[r] @ i[r], i[r] @ w_item, u[r] @ w_user) for r in range(len(users))]


def test_macr_ranks_by_the_fused_score_minus_its_counterfactual_part(tiny):
    model, _, _ = built("MACR", tiny, counterfactual_c=2.5)
    model.eval()
    users, items = [1, 1, 6], [2, 9, 9]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
        scores = model.predict(Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(items)})).tolist()
    by_hand = [
        k * sigmoid(yi) * sigmoid(yu) - 2.5 * sigmoid(yi) * sigmoid(yu) for k, yi, yu in macr_branches(model, users, items)
    ]
    assert scores == pytest.approx(by_hand, rel=1e-5)
    fused = [k * sigmoid(yi) * sigmoid(yu) for k, yi, yu in macr_branches(model, users, items)]
    assert all(abs(f - s) > 0.01 for f, s in zip(fused, scores))  # c = 0 would rank by these


@pytest.mark.parametrize("fusion_loss", ["bce", "bpr"])
def test_macr_trains_the_fused_score_and_both_modules(tiny, fusion_loss):
    model, _, _ = built("MACR", tiny, fusion_loss=fusion_loss, item_loss_weight=0.3, user_loss_weight=0.2)
    users, pos, neg = [3, 8], [1, 4], [7, 2]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    loss = model.calculate_loss(
        Interaction({"user_id": torch.tensor(users), "item_id": torch.tensor(pos), "neg_item_id": torch.tensor(neg)})
    ).item()
    positives, negatives = macr_branches(model, users, pos), macr_branches(model, users, neg)
    fused_pos = [k * sigmoid(yi) * sigmoid(yu) for k, yi, yu in positives]
    fused_neg = [k * sigmoid(yi) * sigmoid(yu) for k, yi, yu in negatives]
    item_pos, item_neg = [yi for _, yi, _ in positives], [yi for _, yi, _ in negatives]
    user_logits = [yu for _, _, yu in positives]

    def bce(ones, zeros):  # mean over the rows: ones labelled 1, zeros labelled 0
        return -(sum(map(log_sigmoid, ones)) + sum(log_sigmoid(-x) for x in zeros)) / (len(ones) + len(zeros))

    if fusion_loss == "bce":
        loss_o, loss_i = bce(fused_pos, fused_neg), bce(item_pos, item_neg)
    else:
        loss_o = -sum(log_sigmoid(p - n) for p, n in zip(fused_pos, fused_neg)) / 2
        loss_i = -sum(log_sigmoid(p - n) for p, n in zip(item_pos, item_neg)) / 2
    loss_u = bce(user_logits, user_logits)  # a user is in both rows of its triple
    assert loss == pytest.approx(loss_o + 0.3 * loss_i + 0.2 * loss_u, rel=1e-5)


# --- all three ----------------------------------------------------------------------------------


VARIANTS = [
    ("DICE", {}),
    ("DICE", {"discrepancy": "l2"}),
    ("PDA", {}),
    ("PDA", {"predict_method": "PDA", "popularity_stages": 2}),
    ("MACR", {"counterfactual_c": 1.5}),
    ("MACR", {"module_hidden_size": [4]}),
]


@pytest.mark.parametrize("name, options", VARIANTS)
def test_predict_agrees_with_full_sort_predict(tiny, name, options):
    model, _, _ = built(name, tiny, **options)
    model.eval()
    full, pointwise = full_and_pointwise_scores(model, torch.tensor([1, 5, 9]))
    assert full.shape == (3, model.n_items)
    assert torch.allclose(full, pointwise, atol=1e-6)


@pytest.mark.parametrize(
    "name, option, value, message",
    [
        ("DICE", "discrepancy", "cosine", "must be dcor or l1 or l2"),
        ("DICE", "margin_decay", 1.5, r"must be a number in \[0, 1\]"),
        ("DICE", "discrepancy_rows", 1, r"must be an integer in \[2, inf\]"),
        ("PDA", "pop_exponent", -1, r"must be a number in \[0, inf\]"),
        ("PDA", "predict_method", "PDX", "must be PD or PDA"),
        ("MACR", "counterfactual_c", "high", "must be a number"),
        ("MACR", "fusion_loss", "ce", "must be bce or bpr"),
        ("MACR", "module_hidden_size", [0], "must be a list of positive integers"),
    ],
)
def test_a_bad_option_fails_before_training_naming_it(tiny, name, option, value, message):
    with pytest.raises(ValueError, match=f"config option '{option}' {message}"):
        built(name, tiny, **{option: value})


@pytest.mark.parametrize("name, options", [VARIANTS[0], VARIANTS[3], VARIANTS[4]])
def test_checkpoint_reloads_through_the_runner_and_reproduces_the_test(tiny, name, options):
    tiny["config_dict"].update(options)
    result = run_recbole_endo(model=name, saved=True, **tiny)
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert isinstance(model, {"DICE": DICE, "PDA": PDA, "MACR": MACR}[name])
    assert set(model.state_dict()) == set(checkpoint["state_dict"])
    for key, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], tensor)
    for option, value in options.items():
        assert config[option] == value
    if name == "DICE":  # the curriculum's epoch count travels with the weights
        assert int(model.epochs_started) == result["best_epoch"] + 1
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    test_result = trainer.evaluate(test_data, load_best_model=False)
    assert test_result["ndcg@10"] == result["test_result"]["ndcg@10"]
    assert test_result["recall@10"] == result["test_result"]["recall@10"]


@pytest.mark.parametrize("name", ["DICE", "PDA", "MACR"])
def test_search_space_names_only_the_models_options_and_holds_its_defaults(tiny, name):
    config = Config(model=name, **tiny)
    space = read_search_space(str(search_space_file(name)), config)
    # The first trial of a study runs the defaults: each searched default lies in the space
    # (but embedding_size, which the tiny data's file sets to 8).
    assert set(default_params(space, config)) == set(space) - {"embedding_size"}


def test_dice_resumed_run_continues_the_curriculum_and_ends_as_the_uninterrupted_one(tiny):
    # Decays of one half, so a resumed run that restarted the schedule would train otherwise.
    def fitted(run, epochs, resume_file=None):
        config_dict = {
            **tiny["config_dict"], "checkpoint_dir": f"{tiny['config_dict']['checkpoint_dir']}/{run}", "epochs": epochs,
            "margin_decay": 0.5, "loss_decay": 0.5, "pop_margin": 4,
        }
        _, model, trainer, (train_data, valid_data, test_data) = build(Config(model="DICE", **{**tiny, "config_dict": config_dict}))
        if resume_file:
            trainer.resume_checkpoint(resume_file)
        trainer.fit(train_data, valid_data)
        return model, trainer, test_data

    straight, straight_trainer, test_data = fitted("straight", 4)
    interrupted, interrupted_trainer, _ = fitted("interrupted", 2)
    resumed, resumed_trainer, _ = fitted("interrupted", 4, interrupted_trainer.saved_model_file)
    assert resumed_trainer.start_epoch > 0
    assert int(resumed.epochs_started) == int(straight.epochs_started) == 4
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, straight.state_dict()[name]), name
    assert resumed_trainer.train_loss_dict == straight_trainer.train_loss_dict
