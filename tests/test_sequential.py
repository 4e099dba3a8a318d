"""EndoSASRec and SplitSASRec (issue 16) and the plugin's sequential protocol, on the tiny data."""

import math
import os

import pytest
import torch
from recbole.config import Config as RecBoleConfig
from recbole.data.interaction import Interaction

from recbole_endo import Config, EndoSASRec, SplitSASRec, get_trainer
from recbole_endo.data.cold_start import write_sequential_cold_item_split
from recbole_endo.data.interactions import trained_entities
from recbole_endo.quick_start import build, load_data_and_model, run_recbole_endo

from conftest import DATA_DIR

TINY_DIR = os.path.join(DATA_DIR, "tiny")
SEQUENTIAL_MODELS = ["EndoSASRec", "SplitSASRec"]
# The tiny data's tower ends in 8 (tiny.yaml's mlp_hidden_size): the encoder must match it.
SMALL_ENCODER = {"hidden_size": 8, "inner_size": 16, "MAX_ITEM_LIST_LENGTH": 10}


@pytest.fixture
def seq_tiny(tiny):
    tiny["config_dict"].update(SMALL_ENCODER)
    return tiny


def built(name, seq_tiny, **options):
    seq_tiny["config_dict"].update(options)
    dataset, model, trainer, splits = build(Config(model=name, **seq_tiny))
    return model, trainer, splits


def test_sequential_models_get_leave_one_out_in_time_order_and_ce_without_sampled_negatives(tiny):
    tiny["config_dict"]["MAX_ITEM_LIST_LENGTH"] = 10
    config = Config(model="SASRec", **tiny)
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert config["train_neg_sample_args"]["distribution"] == "none"
    result = run_recbole_endo(model="SASRec", **tiny)
    users = result["per_user"]["ndcg@10"][0]
    assert len(users) == len(set(users)) == 40  # leave-one-out: one test target per user, paired by id
    # A general model keeps the plugin's random split.
    assert Config(model="BPR", **tiny)["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}


def test_asking_for_sampled_negatives_with_ce_is_refused_as_recbole_refuses_it(tiny):
    tiny["config_dict"]["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}
    with pytest.raises(ValueError, match="should be None when the loss_type is CE"):
        Config(model="SASRec", **tiny)


@pytest.mark.parametrize("name", SEQUENTIAL_MODELS)
@pytest.mark.parametrize("config_class", [Config, RecBoleConfig])
def test_bpr_samples_recboles_default_negative_and_is_refused_without_a_sampler(name, config_class, seq_tiny):
    # The model's file turns the sampler off for its default CE: BPR alone must turn it back on.
    seq_tiny["config_dict"]["loss_type"] = "BPR"
    sampler = config_class(model=name, **seq_tiny)["train_neg_sample_args"]
    assert (sampler["distribution"], sampler["sample_num"]) == ("uniform", 1)
    for no_sampler in (None, {"distribution": None}):
        seq_tiny["config_dict"]["train_neg_sample_args"] = no_sampler
        with pytest.raises(ValueError, match=r"'loss_type' BPR ranks .* but 'train_neg_sample_args' is"):
            config_class(model=name, **seq_tiny)


@pytest.mark.parametrize("name", SEQUENTIAL_MODELS)
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_the_rank_loss_is_ce_over_every_item_or_bpr_against_the_sampled_negative_and_trains(name, loss_type, seq_tiny):
    # Only the loss type is given: BPR samples its negatives as RecBole does by default. No
    # dropout in the encoder, so a training step's sequence representations can be recomputed.
    model, trainer, (train_data, valid_data, test_data) = built(
        name, seq_tiny, loss_type=loss_type, hidden_dropout_prob=0.0, attn_dropout_prob=0.0
    )
    batch = next(iter(train_data))
    model.train()
    model.calculate_loss(batch)
    with torch.no_grad():
        # By hand: every item through the tower, each sequence through the encoder over its steps'
        # representations, and a row's score of item j the dot product with item j's.
        items = model.item_tower(torch.arange(model.n_items))
        item_seq, targets = batch[model.ITEM_SEQ], batch[model.POS_ITEM_ID]
        scores = model.forward(item_seq, batch[model.ITEM_SEQ_LEN], items[item_seq]) @ items.T
        target = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
        if loss_type == "CE":  # softmax over every item: -log(e^target / sum_j e^j)
            by_hand = (torch.logsumexp(scores, 1) - target).mean()
        else:  # the target against the row's sampled negative, as RecBole's BPRLoss counts it:
            # -log(1e-10 + sigmoid(target - negative)), a row's loss capped at -log(1e-10) = 23.0
            negative = scores.gather(1, batch[model.NEG_ITEM_ID].unsqueeze(1)).squeeze(1)
            by_hand = -torch.log(1e-10 + torch.sigmoid(target - negative)).mean()
    assert model.loss_components["rank"].item() == pytest.approx(by_hand.item(), rel=1e-5)

    trainer.fit(train_data, valid_data)
    components = trainer.loss_component_history[1]
    expected = {"rank"}
    if name == "EndoSASRec":
        expected |= {"item_stage1", "item_side_ssl", "item_atom_ssl", "item_cos_mean", "item_inside_margin"}
    assert expected <= set(components)
    assert all(math.isfinite(value) for value in components.values())
    assert all(math.isfinite(value) for value in trainer.evaluate(test_data).values())


def test_atom_dropout_trains_each_item_from_its_side_alone_and_scores_it_with_its_atoms(seq_tiny):
    """i3 and i11 share their side (class drama) and differ in their atoms (id and title words).
    With atom_dropout 1.0 a training step embeds every item's atoms as a new item's, so the item
    representations it scores with (its steps' and its candidates') are equal for the two; with
    0.0 they differ; and evaluation never drops an atom, whatever atom_dropout says."""
    found = {}
    for atom_dropout in (1.0, 0.0):
        model, _, (train_data, _, _) = built("EndoSASRec", seq_tiny, atom_dropout=atom_dropout, **SIDE_CLASS_ONLY)
        i3, i11 = (int(train_data._dataset.token2id("item_id", item)) for item in ("i3", "i11"))
        item_terms, stepped = model.item_terms, {}

        def capture(ids, target_rows):
            reprs, terms = item_terms(ids, target_rows)
            stepped.update(zip(ids.tolist(), reprs.detach()))
            return reprs, terms

        model.item_terms = capture
        model.train()
        model.calculate_loss(next(iter(train_data)))  # CE: the step represents every item
        model.eval()
        with torch.no_grad():
            scored = model.all_item_representations()
        found[atom_dropout] = (stepped[i3], stepped[i11]), (scored[i3], scored[i11])
    (trained, evaluated), (kept, evaluated_kept) = found[1.0], found[0.0]
    assert torch.allclose(*trained, atol=1e-6)
    assert not torch.allclose(*kept, atol=1e-3)
    assert not torch.allclose(*evaluated, atol=1e-3) and not torch.allclose(*evaluated_kept, atol=1e-3)


def sequences(model, rows):
    """An interaction of ``rows`` (lists of item ids), right-padded as RecBole pads them."""
    width = model.max_seq_length
    item_seq = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    return Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: torch.tensor([len(row) for row in rows])})


def test_a_padded_step_never_contributes(seq_tiny):
    model, _, _ = built("EndoSASRec", seq_tiny)
    model.eval()
    batch = sequences(model, [[3, 7, 9], [5], [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]])
    item_seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        reprs = model.all_item_representations()[item_seq]
        clean = model.forward(item_seq, lengths, reprs)
        # Whatever the padded steps' representations hold, the sequence representation is the same.
        noisy = torch.where((item_seq == 0).unsqueeze(-1), 100 * torch.randn_like(reprs), reprs)
        assert torch.allclose(model.forward(item_seq, lengths, noisy), clean, atol=1e-5)
        # A step after the sequence's end is not read either: later steps never reach earlier ones.
        longer = item_seq.clone()
        longer[0, 3] = 11
        assert torch.allclose(model.forward(longer, lengths, model.all_item_representations()[longer])[0], clean[0], atol=1e-5)
        assert clean.shape == (3, 8)


@pytest.mark.parametrize("name", SEQUENTIAL_MODELS)
def test_predict_agrees_with_full_sort_predict(name, seq_tiny):
    model, _, _ = built(name, seq_tiny)
    model.eval()
    batch = sequences(model, [[3, 7, 9], [5]])
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        assert full.shape == (2, model.n_items)
        for item in (1, 9, model.n_items - 1):
            pointwise = model.predict(Interaction({**{k: batch[k] for k in batch.columns}, "item_id": torch.tensor([item, item])}))
            assert torch.allclose(pointwise, full[:, item], atol=1e-5)


def test_items_that_only_start_sequences_count_as_trained(seq_tiny):
    model, _, (train_data, _, _) = built("SplitSASRec", seq_tiny)
    split = train_data._dataset
    targets = set(split.inter_feat["item_id"].tolist())
    steps = set(split.inter_feat["item_id_list"].flatten().tolist()) - {0}
    assert steps - targets  # each user's first item is a step and no row's target
    trained = trained_entities(split, "item")
    assert set(torch.nonzero(trained).flatten().tolist()) == targets | steps


def test_an_unseen_item_is_scored_from_its_features_not_its_id(seq_tiny):
    model, _, _ = built("EndoSASRec", seq_tiny)
    ids = model.item_tower.embeddings["atom"]
    ids.seen_item_id[4] = False  # item 4 unseen, as a cold item is: its id embeds as the mean seen id
    batch = sequences(model, [[3, 7, 9], [5]])

    def scores():
        model.eval()
        with torch.no_grad():
            return model.full_sort_predict(batch)

    before = scores()
    model.train()
    with torch.no_grad():
        ids.encoders["item_id"].weight[4] += 1.0
    after_unseen = scores()
    assert torch.isfinite(before).all()
    assert torch.allclose(after_unseen, before, atol=1e-6)  # its own id row is never read
    model.train()
    with torch.no_grad():
        ids.encoders["item_id"].weight[6] += 1.0
    after_seen = scores()
    assert not torch.allclose(after_seen[:, 6], before[:, 6])  # a trained item's is


def test_tower_and_encoder_sizes_must_agree_before_training(seq_tiny):
    seq_tiny["config_dict"]["hidden_size"] = 16
    with pytest.raises(ValueError, match=r"'mlp_hidden_size' \[16, 8\].*'hidden_size' \(16\)"):
        run_recbole_endo(model="EndoSASRec", **seq_tiny)
    assert not os.path.isdir(seq_tiny["config_dict"]["checkpoint_dir"])


def test_checkpoint_reloads_with_the_same_test_result(seq_tiny):
    result = run_recbole_endo(model="EndoSASRec", **seq_tiny)
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert isinstance(model, EndoSASRec)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])


def test_recbole_own_quick_start_runs_the_sequential_plugin_models(seq_tiny):
    from recbole.quick_start import run_recbole

    result = run_recbole(model="SplitSASRec", **seq_tiny)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    assert SplitSASRec.__name__ in os.listdir(seq_tiny["config_dict"]["checkpoint_dir"])[0]


def test_popularity_strata_of_a_sequential_model_rank_as_recbole_sequential_full_sort(seq_tiny):
    # With every trained item in the head, a user whose target is a head item is ranked by the
    # strata exactly as RecBole's sequential full sort ranks them: nothing masked, no other item removed.
    # A cutoff of 50 of the 60 items puts nearly every target in the top: each rank counts.
    seq_tiny["config_dict"].update(head_share=1.0, topk=[50], valid_metric="NDCG@50")
    result = run_recbole_endo(model="EndoSASRec", **seq_tiny)
    value_of = dict(zip(*result["per_user"]["ndcg@50"]))
    head_users, head_values = result["per_user"]["head:ndcg@50"]
    assert (head_values > 0).mean() > 0.8
    assert len(head_users) >= 10  # the others' targets (40 users, 60 items) never trained
    for user, value in zip(head_users, head_values):
        assert value == pytest.approx(value_of[user], abs=1e-6)


# head_share 1.0: every trained item is in the head; of tiny's 40 test targets 15 are head items
# and 25 never trained (tail), so both strata have users (at 0.5 no test target is in the head).
@pytest.mark.parametrize("option, value", [("list_eval", "sampled"), ("cold_eval", "item"), ("head_share", 1.0)])
def test_the_extra_protocols_score_each_users_test_sequence(option, value, seq_tiny, monkeypatch):
    """An oracle in the model's place scores a test row's own target 1 and every other item 0
    when it is given that row's sequence (the user's items before the test target); any other
    sequence (the user's validation row, another user's row) scores 0 everywhere. A protocol
    that scores each user's test sequence ranks every target first: each of its ranking metrics
    is 1, by hand (one relevant item at rank 1); scored from another row, far less."""
    _, _, (_, _, test_data) = built("SplitSASRec", seq_tiny)
    test = test_data._dataset.inter_feat
    target_of = {}
    for sequence, length, target in zip(test["item_id_list"], test["item_length"], test["item_id"]):
        target_of[tuple(sequence[:length].tolist())] = int(target)
    assert len(target_of) == len(test) == 40  # one test row per user, no two with one sequence

    def oracle(self, interaction):
        scores = torch.zeros(len(interaction[self.ITEM_SEQ]), self.n_items)
        for row, (sequence, length) in enumerate(zip(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])):
            target = target_of.get(tuple(sequence[:length].tolist()))
            if target is not None:
                scores[row, target] = 1.0
        return scores

    monkeypatch.setattr(SplitSASRec, "full_sort_predict", oracle)
    seq_tiny["config_dict"].update({option: value, "epochs": 1})
    result = run_recbole_endo(model="SplitSASRec", **seq_tiny)["test_result"]
    assert result["ndcg@10"] == 1.0  # RecBole's own full sort of the test rows, as a check of the oracle
    prefix = {"list_eval": ("sampled",), "cold_eval": ("cold", "warm"), "head_share": ("head", "tail")}[option]
    ranking = {key: value for key, value in result.items() if key.split(":")[0] in prefix and not key.endswith("items")}
    assert len(ranking) >= 4, sorted(result)
    assert ranking == dict.fromkeys(ranking, 1.0)


def test_the_extra_protocols_need_one_test_row_per_user_for_a_sequential_model(seq_tiny):
    seq_tiny["config_dict"].update(head_share=0.5, eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO"})
    with pytest.raises(ValueError, match=r"'head_share' is 0.5: for a sequential model \(EndoSASRec\).*one test row per user"):
        run_recbole_endo(model="EndoSASRec", **seq_tiny)
    assert not os.path.isdir(seq_tiny["config_dict"]["checkpoint_dir"])


def test_the_user_side_tower_adds_what_the_users_side_fields_say(seq_tiny):
    model, trainer, (train_data, valid_data, _) = built("EndoSASRec", seq_tiny, user_side_tower=True)
    trainer.fit(train_data, valid_data)
    dataset = train_data._dataset
    # u1 and u2 share every side field (26-35, F, romance); u3 is 18-25 and M.
    u1, u2, u3 = (dataset.token2id("user_id", user) for user in ("u1", "u2", "u3"))
    users = dataset.get_user_feature()
    assert all(users[field][u1] == users[field][u2] for field in ("age", "gender", "favourite"))
    assert users["age"][u3] != users["age"][u1]
    batch = sequences(model, [[3, 7, 9]] * 3)
    batch.update(Interaction({"user_id": torch.tensor([u1, u2, u3])}))
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    assert torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[0], scores[2])


def test_the_user_side_tower_needs_side_fields(seq_tiny):
    seq_tiny["config_dict"].update(
        user_side_tower=True, endo_fields={"user": {"atom": ["user_id"], "side": []}, "item": {"atom": ["item_id"], "side": ["class"]}}
    )
    with pytest.raises(ValueError, match=r"'user_side_tower'.*endo_fields.user.side names no field"):
        run_recbole_endo(model="SplitSASRec", **seq_tiny)


@pytest.fixture
def cold_sequences(tmp_path):
    return write_sequential_cold_item_split(TINY_DIR, "tiny", str(tmp_path / "cold"), seed=2020, max_length=10)


def read_split(folder, part):
    header, *rows = open(os.path.join(folder, f"tiny.cold_item_seq.{part}.inter")).read().splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


def test_sequential_cold_items_are_only_validation_and_test_targets(cold_sequences):
    header, train = read_split(cold_sequences, "train")
    _, valid = read_split(cold_sequences, "valid")
    _, test = read_split(cold_sequences, "test")
    assert header[-1] == "item_id_list:token_seq"
    trained = {row[1] for row in train} | {item for row in train for item in row[-1].split()}
    targets = {row[1] for row in valid + test}
    cold = targets - trained
    assert len(cold) >= 3  # tiny: 12 cold items, some of them a user's last two
    assert not cold & {item for row in valid + test for item in row[-1].split()} - {row[1] for row in valid}
    assert len({row[0] for row in test}) == len(test) == 40 and len({row[0] for row in valid}) == len(valid)
    valid_target = {row[0]: row[1] for row in valid}
    assert all(row[-1].split()[-1] == valid_target[row[0]] for row in test if row[0] in valid_target)
    assert max(len(row[-1].split()) for row in train + valid + test) == 10
    # Each user's rows are in time order: a user's test target is the latest interaction of theirs.
    source = [line.split("\t") for line in open(os.path.join(TINY_DIR, "tiny.inter")).read().splitlines()[1:]]
    latest = {}
    for user, item, _, time in source:
        if float(time) >= latest.get(user, (None, -1))[1]:
            latest[user] = (item, float(time))
    assert all(row[1] == latest[row[0]][0] for row in test)


def test_a_sequential_model_ranks_cold_items_it_never_trained_on(seq_tiny, cold_sequences):
    seq_tiny["config_file_list"].append(os.path.join(cold_sequences, "tiny.cold_item_seq.yaml"))
    seq_tiny["config_dict"].update(data_path=os.path.dirname(cold_sequences), cold_eval="item")
    model, trainer, (train_data, valid_data, test_data) = built("EndoSASRec", seq_tiny)
    cold = ~trained_entities(train_data._dataset, "item")
    _, train = read_split(cold_sequences, "train")
    assert int(cold[1:].sum()) == 60 - len({row[1] for row in train} | {i for row in train for i in row[-1].split()})
    result = run_recbole_endo(model="EndoSASRec", **seq_tiny)
    assert result["test_result"]["cold:items"] >= 3 and 0 <= result["test_result"]["cold:ndcg@10"] <= 1


def test_a_cold_valid_metric_selects_a_sequential_model_on_the_new_validation_targets(seq_tiny, cold_sequences):
    seq_tiny["config_file_list"].append(os.path.join(cold_sequences, "tiny.cold_item_seq.yaml"))
    seq_tiny["config_dict"].update(data_path=os.path.dirname(cold_sequences), cold_eval="item", valid_metric="cold:ndcg@10")
    result = run_recbole_endo(model="EndoSASRec", **seq_tiny)
    _, train = read_split(cold_sequences, "train")
    _, valid = read_split(cold_sequences, "valid")
    trained = {row[1] for row in train} | {item for row in train for item in row[-1].split()}
    assert result["best_valid_result"]["cold:items"] == len({row[1] for row in valid} - trained)
    assert result["best_valid_score"] == result["best_valid_result"]["cold:ndcg@10"]


SIDE_CLASS_ONLY = {"endo_fields": {"user": {"atom": ["user_id"], "side": []}, "item": {"atom": ["item_id"], "side": ["class"]}}}


def test_side_profile_scores_the_cosine_to_the_last_steps_genres(seq_tiny):
    model, _, (train_data, _, _) = built("SideProfile", seq_tiny, profile_length=2, **SIDE_CLASS_ONLY)
    dataset = train_data._dataset
    genres = {}  # raw item token -> its genres, read from the file, not from the model
    for line in open(os.path.join(TINY_DIR, "tiny.item")).read().splitlines()[1:]:
        token, _, classes, _ = line.split("\t")
        genres[token] = classes.split()
    token = lambda item: dataset.id2token("item_id", item)
    history = [3, 7, 9, 11]  # only the last two steps (9 and 11) make the profile
    profile = {}
    for item in history[-2:]:
        for genre in genres[token(item)]:
            profile[genre] = profile.get(genre, 0) + 1
    norm = math.sqrt(sum(count * count for count in profile.values()))
    batch = sequences(model, [history, [5]])
    full = model.full_sort_predict(batch)
    for item in range(1, model.n_items):
        own = genres[token(item)]
        expected = sum(profile.get(genre, 0) for genre in own) / (norm * math.sqrt(len(own)))
        assert full[0, item].item() == pytest.approx(expected, abs=1e-6)
    pointwise = model.predict(Interaction({**{k: batch[k] for k in batch.columns}, "item_id": torch.tensor([4, 4])}))
    assert torch.allclose(pointwise, full[:, 4])


def test_side_profile_counts_only_token_fields_and_needs_one(seq_tiny):
    model, _, (train_data, _, _) = built("SideProfile", seq_tiny)  # tiny.yaml's item side is [class, price]: price is float
    assert model.item_side.shape[1] == train_data._dataset.num("class") - 1
    with pytest.raises(ValueError, match=r"names no token or token_seq field \(\['price'\]\)"):
        built("SideProfile", seq_tiny, endo_fields={"user": {"side": ["age"]}, "item": {"atom": ["item_id"], "side": ["price"]}})


def test_side_profile_runs_through_the_quick_start_in_one_pass(seq_tiny, cold_sequences):
    seq_tiny["config_file_list"].append(os.path.join(cold_sequences, "tiny.cold_item_seq.yaml"))
    seq_tiny["config_dict"].update(data_path=os.path.dirname(cold_sequences), cold_eval="item", **SIDE_CLASS_ONLY)
    result = run_recbole_endo(model="SideProfile", **seq_tiny)
    assert result["best_epoch"] == 0 and result["epochs"] == 1
    assert result["test_result"]["cold:items"] >= 3
