"""A RecBole dataset runs every plugin model with only ``model`` set: ``endo_fields`` is derived
from the loaded features, grades default to plain BPR, and a tower without side fields runs."""

import logging
import math
import shutil

import pytest
import torch
from recbole.data import create_dataset

from conftest import DATA_DIR
from recbole_endo import Config
from recbole_endo.model import MODELS
from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import FeatureEmbedding, derive_endo_fields
from recbole_endo.quick_start import build, load_data_and_model, run_recbole_endo

# RecBole's own model-test style: its atomic files, every float normalised, no plugin option.
RECBOLE_STYLE_YAML = """\
dataset: {dataset}
data_path: {data_path}
load_col:
  inter: [user_id, item_id, rating, timestamp]
  user: [user_id, age, gender, favourite]
{item_columns}
normalize_all: True
epochs: 1
state: WARNING
"""
ITEM_COLUMNS = "  item: [item_id, title, class, price]"


def recbole_style(tmp_path, dataset="tiny", data_path=DATA_DIR, item_columns=ITEM_COLUMNS):
    config_file = tmp_path / "recbole_style.yaml"
    config_file.write_text(RECBOLE_STYLE_YAML.format(dataset=dataset, data_path=data_path, item_columns=item_columns))
    return {"config_file_list": [str(config_file)], "config_dict": {"checkpoint_dir": str(tmp_path / "saved")}}


def test_derived_endo_fields_name_ids_and_identity_like_fields_atoms(tmp_path):
    config = Config(model="TwoTowerSplit", **recbole_style(tmp_path))
    derived = derive_endo_fields(create_dataset(config).build()[0])  # the training split, as models get it
    # By hand, from tests/data/tiny: 46 distinct titles for 60 items (atom), 20 distinct genre
    # lists (side), a float price (side); users: 3 ages, 2 genders, 5 favourite genres (side).
    assert derived == {
        "user": {"atom": ["user_id"], "side": ["age", "gender", "favourite"]},
        "item": {"atom": ["item_id", "title"], "side": ["class", "price"]},
    }


def test_ml100k_endo_fields_are_the_derived_ones_with_zip_code_an_atom():
    config = Config(model="TwoTowerSplit", dataset="ml-100k")
    derived = derive_endo_fields(create_dataset(config).build()[0])  # the training split, as models get it
    # 795 zip codes for 943 users: a zip code names a user (nearly), it does not describe one.
    assert derived["user"] == {"atom": ["user_id", "zip_code"], "side": ["age", "gender", "occupation"]}
    assert derived == config["endo_fields"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_plugin_model_runs_on_a_recbole_style_config_with_only_the_model_set(name, tmp_path):
    result = run_recbole_endo(model=name, **recbole_style(tmp_path))
    assert all(torch.isfinite(torch.tensor(value)) for value in result["test_result"].values())
    if not issubclass(MODELS[name], FeatureTowerRecommender):
        return  # the ItemMeanRating floor reads no feature field
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["config"]["endo_fields"]["item"] == {"atom": ["item_id", "title"], "side": ["class", "price"]}
    assert checkpoint["config"]["grade_thresholds"] == []


def tiny_without_items(tmp_path, name):
    """A folder ``tmp_path/name`` holding the tiny dataset's .inter and .user files as ``name``'s."""
    folder = tmp_path / name
    folder.mkdir()
    for suffix in ("inter", "user"):
        shutil.copy(f"{DATA_DIR}/tiny/tiny.{suffix}", folder / f"{name}.{suffix}")
    return folder


@pytest.fixture
def without_item_file(tmp_path):
    """The tiny dataset without its .item file, in RecBole's style."""
    tiny_without_items(tmp_path, "noitem")
    return recbole_style(tmp_path, dataset="noitem", data_path=tmp_path, item_columns="")


def test_without_an_item_file_endo_decouple_runs_its_item_tower_undecoupled(without_item_file, caplog):
    with caplog.at_level(logging.WARNING):
        _, model, trainer, (train_data, valid_data, _) = build(Config(model="EndoDecouple", **without_item_file))
        trainer.fit(train_data, valid_data, saved=False)
    assert model.endo_fields["item"] == {"atom": ["item_id"], "side": []}
    assert not model.towers["item"].decoupled and model.towers["user"].decoupled
    off = [record for record in caplog.records if "item tower's decoupling terms" in record.getMessage()]
    assert len(off) == 1
    components = trainer.loss_component_history[0]
    assert "user_side_ssl" in components and not [name for name in components if name.startswith("item_")]


def test_endo_weight_without_item_side_fields_is_refused_before_training(without_item_file):
    without_item_file["config_dict"]["sample_weight"] = "endo"
    with pytest.raises(ValueError, match="'sample_weight' endo"):
        run_recbole_endo(model="EndoDecouple", **without_item_file)


@pytest.mark.parametrize("name", ["TwoTowerConcat", "TwoTowerSplit"])
def test_without_an_item_file_the_two_towers_run_with_an_id_item_tower(name, without_item_file):
    _, model, trainer, (train_data, valid_data, test_data) = build(Config(model=name, **without_item_file))
    assert model.endo_fields["item"] == {"atom": ["item_id"], "side": []}
    tower = model.towers["item"]
    (embedding,) = [module for module in tower.modules() if isinstance(module, FeatureEmbedding)]
    assert embedding.fields == ["item_id"]
    trainer.fit(train_data, valid_data, saved=False)
    assert math.isfinite(trainer.train_loss_dict[0])
    assert all(math.isfinite(value) for value in trainer.evaluate(test_data, load_best_model=False).values())
    # An id tower: an item's representation is read from its own id row, and from no other's.
    # Moving item 3's row moves item 3 alone (in training mode, where no unseen id is replaced by the mean).
    model.train()
    with torch.no_grad():
        before = tower(torch.arange(model.n_items))
        embedding.encoders["item_id"].weight[3] += 1.0
        moved = (tower(torch.arange(model.n_items)) - before).abs().sum(1) > 1e-6
    assert moved.nonzero().flatten().tolist() == [3]


def test_fields_named_as_module_attributes_embed_and_reload(tmp_path):
    # torch refuses a submodule or buffer named "type" or "float" (attributes of every module).
    folder = tiny_without_items(tmp_path, "renamed")
    with open(f"{DATA_DIR}/tiny/tiny.item") as file:
        lines = file.readlines()
    lines[0] = lines[0].replace("class:token_seq", "type:token_seq").replace("price:float", "float:float")
    (folder / "renamed.item").write_text("".join(lines))
    options = recbole_style(tmp_path, dataset="renamed", data_path=tmp_path, item_columns="  item: [item_id, title, type, float]")
    result = run_recbole_endo(model="EndoDecouple", **options)
    assert all(math.isfinite(value) for value in result["test_result"].values())
    _, model, dataset, *_ = load_data_and_model(result["checkpoint"])
    assert model.endo_fields["item"]["side"] == ["type", "float"]
    (side,) = [module for module in model.towers["item"].modules()
               if isinstance(module, FeatureEmbedding) and module.fields == ["type", "float"]]
    assert side.encoder("type").num_embeddings == dataset.num("type")
    assert side.table("float").shape == (dataset.item_num, 1)
