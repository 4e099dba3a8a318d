import os
import shutil

import pytest
import torch
from recbole.data import create_dataset

from recbole_endo import Config
from recbole_endo.model.towers import FeatureEmbedding, SplitTower, check_endo_fields, dropout, parse_endo_fields

from conftest import DATA_DIR


def training_dataset(config):
    """The training split, as a model receives it (feature tables converted to tensors)."""
    return create_dataset(config).build()[0]


@pytest.fixture
def tiny_dataset(tiny):
    return training_dataset(Config(model="TwoTowerSplit", **tiny))


def numbered(embedding):
    """``embedding`` with every field's encoder set so that the field embeds as its number, by
    hand: a token field's rows all hold its number, a float field maps any value to it (weight 0)."""
    number = {"item_id": 1.0, "title": 2.0, "class": 3.0, "price": 4.0}
    with torch.no_grad():
        for field, encoder in embedding.encoders.items():
            if isinstance(encoder, torch.nn.Linear):
                encoder.weight.zero_()
                encoder.bias.fill_(number[field])
            else:
                encoder.weight.fill_(number[field])
    return embedding


def test_each_field_embeds_on_its_own_axis_in_the_order_given(tiny_dataset):
    fields = ["item_id", "title", "class", "price"]
    items = torch.tensor([int(tiny_dataset.token2id("item_id", item)) for item in ("i1", "i2", "i3")])
    embedding = numbered(FeatureEmbedding(tiny_dataset, "item", fields, 8))
    assert embedding.output_size == 32
    # i1, i2 and i3 have an id, a title, a class and a price: axis k holds field k's number.
    by_hand = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1).expand(3, 4, 8)
    assert torch.equal(embedding(items), by_hand)
    # i10's title is empty (the generator leaves every tenth one so): its title axis is zeros.
    empty = embedding(torch.tensor([int(tiny_dataset.token2id("item_id", "i10"))]))
    assert torch.equal(empty[0, :, 0], torch.tensor([1.0, 0.0, 3.0, 4.0]))
    # Another order of the same fields puts each field on its axis of that order, the float
    # field (price) first and the token fields after it.
    reordered = numbered(FeatureEmbedding(tiny_dataset, "item", ["price", "class", "item_id", "title"], 8))
    assert torch.equal(reordered(items)[0, :, 0], torch.tensor([4.0, 3.0, 1.0, 2.0]))


def test_token_seq_is_mean_of_non_padding_tokens_and_empty_cell_is_zero(tiny_dataset):
    embedding = FeatureEmbedding(tiny_dataset, "item", ["title"], 4)
    table = tiny_dataset.get_item_feature()["title"]
    with torch.no_grad():
        weights = torch.arange(embedding.encoders["title"].num_embeddings * 4, dtype=torch.float).view(-1, 4)
        embedding.encoders["title"].weight.copy_(weights)
    empty = int(tiny_dataset.token2id("item_id", "i10"))  # the generator leaves every tenth title empty
    assert (table[empty] == 0).all()
    multi = int(next(i for i in range(1, len(table)) if (table[i] != 0).sum() >= 2))
    tokens = table[multi][table[multi] != 0]
    pooled = embedding(torch.tensor([multi, empty]))[:, 0]
    assert torch.allclose(pooled[0], weights[tokens].mean(0))
    assert torch.equal(pooled[1], torch.zeros(4))


@pytest.mark.parametrize("entity, fields", [("item", ["title", "item_id", "price", "class"]), ("user", ["user_id", "age", "gender", "favourite"])])
def test_one_lookup_for_all_fields_equals_each_field_embedded_on_its_own(tiny_dataset, entity, fields):
    """Every entity, in field order, against a per-field loop written out by hand."""
    torch.manual_seed(0)
    embedding = FeatureEmbedding(tiny_dataset, entity, fields, 4)
    table = tiny_dataset.get_user_feature() if entity == "user" else tiny_dataset.get_item_feature()
    ids = torch.arange(len(table))
    expected = [[torch.zeros(4)] * len(fields) for _ in ids]
    for row in ids.tolist():
        for column, field in enumerate(fields):
            value = table[field][row]
            encoder = embedding.encoders[field]
            if isinstance(encoder, torch.nn.Linear):
                expected[row][column] = encoder(value.float().reshape(-1))
            elif value.dim() == 0:
                expected[row][column] = encoder(value)
            elif (value != 0).any():
                expected[row][column] = encoder(value[value != 0]).mean(0)
    expected = torch.stack([torch.stack(row) for row in expected])
    assert torch.allclose(embedding(ids), expected, atol=1e-6)
    assert torch.allclose(embedding(ids[[3, 1, 3]]), expected[[3, 1, 3]], atol=1e-6)
    upstream = torch.randn(len(ids), len(fields), 4)
    gradients = [torch.autograd.grad((output * upstream).sum(), embedding.parameters()) for output in (embedding(ids), expected)]
    assert all(torch.allclose(mine, theirs, atol=1e-5) for mine, theirs in zip(*gradients))
    assert embedding(ids[[1, 2, 3, 4]].view(2, 2)).shape == (2, 2, len(fields), 4)


def test_float_field_is_a_linear_map_of_the_value_in_the_file(tiny_dataset):
    embedding = FeatureEmbedding(tiny_dataset, "item", ["price"], 4)
    with torch.no_grad():
        embedding.encoders["price"].weight.copy_(torch.tensor([[1.0], [2.0], [0.0], [-1.0]]))
        embedding.encoders["price"].bias.copy_(torch.tensor([0.5, 0.0, 3.0, 0.0]))
    items = torch.tensor([int(tiny_dataset.token2id("item_id", item)) for item in ("i1", "i2")])
    # tiny.item: i1 costs 11.79, i2 9.35; each output is weight * price + bias, worked out by hand.
    by_hand = torch.tensor([[12.29, 23.58, 3.0, -11.79], [9.85, 18.70, 3.0, -9.35]])
    assert torch.allclose(embedding(items)[:, 0], by_hand, atol=1e-5)


def test_missing_field_error_names_field_and_file(tiny_dataset):
    with pytest.raises(ValueError, match=r"'colour'.*tiny\.item"):
        FeatureEmbedding(tiny_dataset, "item", ["colour"], 4, group="side")


def test_unloaded_field_error_says_not_loaded(tiny):
    tiny["config_dict"]["load_col"] = {"inter": ["user_id", "item_id", "rating"], "item": ["item_id", "class"]}
    dataset = training_dataset(Config(model="TwoTowerSplit", **tiny))
    with pytest.raises(ValueError, match=r"'price'.*tiny\.item.*not loaded.*load_col\['item'\]"):
        FeatureEmbedding(dataset, "item", ["price"], 4, group="side")


def test_field_from_another_file_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match=r"'rating'.*inter"):
        FeatureEmbedding(tiny_dataset, "user", ["rating"], 4, group="side")


@pytest.mark.parametrize(
    "endo_fields, fault",
    [
        ("user_id", "'endo_fields'"),
        ({"user": {"atom": ["user_id"]}}, "'endo_fields.item'"),
        ({"user": {"atoms": ["user_id"]}, "item": {"atom": ["item_id"]}}, "'endo_fields.user' has unknown keys"),
        ({"user": {"atom": [1]}, "item": {"atom": ["item_id"]}}, "'endo_fields.user.atom'"),
    ],
)
def test_malformed_endo_fields_name_the_option(endo_fields, fault):
    with pytest.raises(ValueError, match=fault):
        check_endo_fields({"endo_fields": endo_fields})


def test_side_fields_of_a_missing_feature_file_are_refused_naming_the_file(tiny, tmp_path):
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    for suffix in ("inter", "item"):  # no tiny.user
        shutil.copy(os.path.join(DATA_DIR, "tiny", f"tiny.{suffix}"), folder)
    tiny["config_dict"]["data_path"] = str(folder.parent)
    with pytest.raises(ValueError, match=r"'age'.*tiny\.user' \(which does not exist\)"):
        FeatureEmbedding(training_dataset(Config(model="TwoTowerSplit", **tiny)), "user", ["age"], 4, group="side")


def test_item_without_a_feature_row_embeds_as_padding_with_the_mean_of_float_fields(tiny, tmp_path):
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    for suffix in ("inter", "user"):
        shutil.copy(os.path.join(DATA_DIR, "tiny", f"tiny.{suffix}"), folder)
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item")) as source:
        header, *rows = [line for line in source if not line.startswith("i5\t")]
    (folder / "tiny.item").write_text(header + "".join(rows))
    # RecBole drops the interactions of an item without a feature row unless told to keep them.
    tiny["config_dict"].update({"data_path": str(folder.parent), "filter_inter_by_user_or_item": False})
    dataset = training_dataset(Config(model="TwoTowerSplit", **tiny))
    item = int(dataset.token2id("item_id", "i5"))
    embedding = FeatureEmbedding(dataset, "item", ["title", "class", "price"], 4)
    assert torch.equal(embedding(torch.tensor([item]))[0, :2], torch.zeros(2, 4))  # title, class
    prices = [float(row.split("\t")[3]) for row in rows]
    assert dataset.get_item_feature()["price"][item].item() == pytest.approx(sum(prices) / len(prices), rel=1e-5)


def test_as_unseen_embeds_the_marked_rows_tokens_as_their_fields_mean_trained_token(tiny_dataset):
    embedding = FeatureEmbedding(tiny_dataset, "item", ["item_id", "title", "price"], 4)
    trained = sorted(set(tiny_dataset.inter_feat["item_id"].tolist()))
    words = tiny_dataset.get_item_feature()["title"][trained].flatten().unique()
    words = words[words != 0]
    expected_id = embedding.encoders["item_id"].weight[trained].mean(0)
    expected_title = embedding.encoders["title"].weight[words].mean(0)
    embedded = embedding(torch.tensor([1, 2, 3]))
    unseen = embedding.as_unseen(embedded, torch.tensor([False, True, False]))
    assert torch.allclose(unseen[1, 0], expected_id) and torch.allclose(unseen[1, 1], expected_title)
    assert torch.equal(unseen[1, 2], embedded[1, 2])  # a float field has no unseen value: kept
    assert torch.equal(unseen[[0, 2]], embedded[[0, 2]])


def split_tower(tiny, **options):
    tiny["config_dict"].update(options)
    config = Config(model="TwoTowerSplit", **tiny)
    dataset = training_dataset(config)
    return SplitTower(dataset, "item", parse_endo_fields(config, dataset)["item"], config)


def test_atom_dropout_embeds_that_share_of_training_rows_atoms_as_unseen_and_none_in_eval(tiny):
    tower = split_tower(tiny, atom_dropout=0.3)
    atoms = tower.embeddings["atom"]
    own = atoms(torch.tensor([3]))
    unseen = atoms.as_unseen(own, torch.tensor([True]))
    torch.manual_seed(0)
    embedded = tower.embed(torch.full((4000,), 3))
    is_own, is_unseen = ((embedded["atom"] == row).all(-1).all(-1) for row in (own, unseen))
    assert (is_own ^ is_unseen).all()
    assert is_unseen.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(embedded["side"], tower.embeddings["side"](torch.full((4000,), 3)))  # the side is never dropped
    tower.eval()
    assert torch.equal(tower.embed(torch.full((50,), 3))["atom"], own.expand(50, -1, -1))


@pytest.mark.parametrize("options, fault", [({"atom_dropout": 1.5}, "'atom_dropout'"), ({"atom_dropout": 0.2, "id_path": True}, "atom_dropout.*id_path")])
def test_atom_dropout_outside_0_1_or_beside_the_id_path_is_refused(tiny, options, fault):
    tiny["config_dict"].update(options)
    with pytest.raises(ValueError, match=fault):
        SplitTower.check_config(Config(model="TwoTowerSplit", **tiny), ("item",))


@pytest.mark.parametrize("name", ["TwoTowerConcat", "EndoDecouple"])
def test_padding_rows_embed_as_zeros_after_initialisation_and_training(name, tiny):
    from recbole_endo.quick_start import build

    _, model, trainer, (train_data, valid_data, _) = build(Config(model=name, **tiny))
    padded = [module for module in model.modules() if isinstance(module, torch.nn.Embedding) and module.padding_idx == 0]
    assert len(padded) == 7  # user_id, age, gender, favourite; item_id, title, class
    assert all(not module.weight[0].any() for module in padded)
    trainer.fit(train_data, valid_data, saved=False)
    assert all(not module.weight[0].any() for module in padded)


@pytest.mark.parametrize("rate", [0.5, 0.198])
def test_dropout_zeroes_its_rate_in_every_position_of_a_draw_and_keeps_the_expectation(rate):
    # Four entries share one 64-bit draw: each of the four positions must drop at the rate (a
    # draw whose sign bit is always 0 drops 0.149 instead of 0.198 in one position in four).
    torch.manual_seed(0)
    rows = 250_000
    output = dropout(torch.ones(rows, 4), rate)
    dropped = (output == 0).double().mean(0)
    tolerance = 4 * (rate * (1 - rate) / rows) ** 0.5
    assert torch.allclose(dropped, torch.full((4,), rate, dtype=torch.double), atol=tolerance)
    kept = output[output != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - rate)), rtol=1e-4)
    assert abs(output.double().mean().item() - 1.0) < 4 * (rate / (1 - rate) / (4 * rows)) ** 0.5
    assert dropout(torch.ones(3), 0.0).equal(torch.ones(3))
