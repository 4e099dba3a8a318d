import pytest
import torch
from recbole.data import create_dataset

from recbole_endo import Config
from recbole_endo.model.towers import FeatureEmbedding, parse_endo_fields


def training_dataset(config):
    """The training split, as a model receives it (feature tables converted to tensors)."""
    return create_dataset(config).build()[0]


@pytest.fixture
def tiny_dataset(tiny):
    return training_dataset(Config(model="TwoTowerSplit", **tiny))


def test_embedding_shape_is_batch_by_fields_by_size(tiny_dataset):
    embedding = FeatureEmbedding(tiny_dataset, "item", ["item_id", "title", "class", "price"], 8)
    assert embedding(torch.tensor([1, 2, 3])).shape == (3, 4, 8)
    assert embedding.output_size == 32


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


def test_float_field_is_a_linear_map_of_its_value(tiny_dataset):
    embedding = FeatureEmbedding(tiny_dataset, "item", ["price"], 4)
    linear = embedding.encoders["price"]
    price = tiny_dataset.get_item_feature()["price"][5]
    expected = linear.weight[:, 0] * price + linear.bias
    assert torch.allclose(embedding(torch.tensor([5]))[0, 0], expected)


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
        parse_endo_fields({"endo_fields": endo_fields})
