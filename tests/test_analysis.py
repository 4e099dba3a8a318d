import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, TINY_YAML

from scipy.stats import spearmanr

from recbole_endo.data.synth import CONFIG_KEYS
from recbole_endo.experiments.analysis import (
    ALL_ATOMS,
    analyse,
    correlation_rows,
    exposure_rows,
    frequency_cos_spearman,
    side_atom_representations,
)
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = [f"{entity}_{plot}.png" for entity in ("user", "item") for plot in ("freq_vs_cos", "pca")]


@pytest.fixture(scope="module")
def endo_checkpoint(tmp_path_factory):
    """An EndoDecouple checkpoint trained for 2 epochs on the tiny dataset (shared by the tests:
    training is the slow part)."""
    folder = tmp_path_factory.mktemp("endo")
    with pytest.MonkeyPatch.context() as patch:  # as conftest's isolated_run, for the whole module
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["pytest"])
        result = run_recbole_endo(
            model="EndoDecouple", dataset="tiny", config_file_list=[TINY_YAML],
            config_dict={"data_path": DATA_DIR, "checkpoint_dir": str(folder / "saved"), "epochs": 2},
        )
    return result["checkpoint"]


def test_spearman_matches_a_hand_computed_rho():
    # Ranks of cos: 1 3 2 5 4 against 1 2 3 4 5; squared rank differences sum to 4:
    # rho = 1 − 6·4 / (5·(5² − 1)) = 0.8.
    rho, p_value, note = frequency_cos_spearman([3, 10, 20, 40, 90], [0.1, 0.3, 0.2, 0.5, 0.4])
    assert rho == pytest.approx(0.8)
    assert 0 < p_value < 1 and note == ""


@pytest.mark.parametrize(
    "frequency, cos, note",
    [
        ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], "fewer than 5 atoms"),
        ([7, 7, 7, 7, 7], [0.1, 0.2, 0.3, 0.4, 0.5], "constant training frequency"),
        ([1, 2, 3, 4, 5], [0.5] * 5, "constant cos(a, s)"),
    ],
)
def test_undefined_spearman_is_reported_not_nan(frequency, cos, note):
    assert frequency_cos_spearman(frequency, cos) == (None, None, note)


def test_token_seq_atoms_count_in_the_group_of_each_of_their_tokens():
    values = [["drama"], ["drama", "comedy"], ["comedy"], ["drama"], ["drama"], ["drama"], []]
    frequency = np.array([1, 2, 3, 4, 5, 6, 7])
    cos = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0])
    rows = correlation_rows("item", "class", frequency, cos, values)
    assert [(row["group"], row["atoms"]) for row in rows] == [(ALL_ATOMS, 7), ("drama", 5), ("comedy", 2)]
    assert rows[1]["rho"] == pytest.approx(1.0)
    assert rows[2]["rho"] is None


def test_cosines_are_those_the_model_trains_on(endo_checkpoint):
    _, model, dataset, _, _, _ = load_data_and_model(endo_checkpoint)
    model.eval()
    for entity in ("user", "item"):
        n_atoms = dataset.num(dataset.uid_field if entity == "user" else dataset.iid_field)
        _, _, cos = side_atom_representations(model.towers[entity], n_atoms, model.device)
        with torch.no_grad():
            expected = model.auxiliary(entity, torch.arange(1, n_atoms))[1].cos
        np.testing.assert_allclose(cos, expected.numpy(), atol=1e-6)


def check_outputs(output_dir):
    for name in PLOTS:
        with open(output_dir / name, "rb") as plot:
            assert plot.read(8) == PNG_MAGIC, name
    rows = json.loads((output_dir / "goal2.json").read_text())["rows"]
    for entity in ("user", "item"):
        (global_row,) = [row for row in rows if row["entity"] == entity and row["group"] == ALL_ATOMS]
        assert -1 <= global_row["rho"] <= 1
        assert global_row["atoms"] == {"user": 40, "item": 60}[entity]
    table = (output_dir / "goal2.md").read_text()
    assert "| entity | group | atoms | Spearman rho | p-value | note |" in table
    assert "| user | (all) | 40 |" in table and "| item | (all) | 60 |" in table
    assert not [name for name in os.listdir(output_dir) if name.endswith(".tmp")]
    return rows


def test_analysis_writes_table_and_plots(endo_checkpoint, tmp_path):
    rows = analyse(endo_checkpoint, str(tmp_path / "goal2"), {"user": "gender"})
    assert rows == check_outputs(tmp_path / "goal2")
    groups = {(row["entity"], row["side_field"], row["group"]) for row in rows}
    assert {("user", "gender", "F"), ("user", "gender", "M")} <= groups
    # Items default to their first side field, class (token_seq): one group per genre token.
    assert ("item", "class", "drama") in groups


def test_command_line_writes_table_and_plots(endo_checkpoint, tmp_path):
    output_dir = tmp_path / "cli"
    completed = subprocess.run(
        [sys.executable, "-m", "recbole_endo.experiments.analysis", endo_checkpoint, f"--output_dir={output_dir}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    check_outputs(output_dir)
    assert "| item | (all) | 60 |" in completed.stdout


@pytest.mark.parametrize(
    "side_fields, message",
    [
        ({"item": "price"}, r"--item_side_field 'price' is a float field"),
        ({"user": "favourite_colour"}, r"--user_side_field 'favourite_colour' is not among .*endo_fields.user.side"),
    ],
)
def test_bad_side_field_is_refused_naming_the_option(endo_checkpoint, tmp_path, side_fields, message):
    with pytest.raises(ValueError, match=message):
        analyse(endo_checkpoint, str(tmp_path / "goal2"), side_fields)
    assert not (tmp_path / "goal2").exists()


@pytest.mark.parametrize("model", ["TwoTowerConcat", "BPR"])
def test_model_without_split_towers_is_refused_naming_it(tiny, tmp_path, model):
    tiny["config_dict"]["epochs"] = 1
    checkpoint = run_recbole_endo(model=model, **tiny)["checkpoint"]
    with pytest.raises(ValueError, match=rf"holds a {model} model.*TwoTowerSplit, EndoDecouple"):
        analyse(checkpoint, str(tmp_path / "goal2"))
    assert not (tmp_path / "goal2").exists()


def test_weights_against_the_true_exposure_are_hand_computed_rank_correlations():
    # Exposure ranks 1 2 3 5 4; item 6 has no training interaction and is left out.
    frequency, exposure = np.array([1, 2, 3, 4, 5, 0]), np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.9])
    cos = np.array([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    rows = {row["weight"]: row for row in exposure_rows(frequency, cos, exposure)}
    # ipw = 1 / count against 1 / pi: d = 0 0 0 1 1, rho = 1 - 6 * 2 / (5 * 24).
    assert rows["ipw"]["rho"] == pytest.approx(0.9) and rows["ipw"]["items"] == 5
    # endo = exp(-cos) against 1 / pi: ranks of -cos 1..5 against 1 / pi's 5 4 3 1 2, sum d^2 = 38.
    assert rows["endo"]["rho"] == pytest.approx(1 - 6 * 38 / 120)


def test_on_endo_synth_the_report_has_the_weights_against_the_generators_exposure(tmp_path):
    tiny = {"users": 50, "items": 40, "interactions": 1000, "user_groups": 4, "item_categories": 5}
    config_dict = {"data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1,
                   "embedding_size": 8, "mlp_hidden_size": [16, 8], "state": "ERROR"}
    config_dict |= {CONFIG_KEYS[name]: value for name, value in tiny.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        checkpoint = run_recbole_endo(model="EndoDecouple", dataset="endo-synth", config_dict=config_dict)["checkpoint"]
    analyse(checkpoint, str(tmp_path / "goal2"))
    rows = {row["weight"]: row for row in json.loads((tmp_path / "goal2" / "goal2.json").read_text())["exposure"]}
    folder = tmp_path / "data" / "endo-synth"
    items = np.loadtxt(folder / "endo-synth.train.inter", skiprows=1, ndmin=2, dtype=int)[:, 1]
    counts = np.bincount(items - 1, minlength=40)  # raw item i is the truth's row i - 1
    exposure = np.load(folder / "endo-synth.truth.npz")["item_exposure"]
    trained = counts > 0
    assert rows["ipw"]["items"] == rows["endo"]["items"] == trained.sum()
    assert rows["ipw"]["rho"] == pytest.approx(spearmanr(1 / counts[trained], 1 / exposure[trained])[0])
    assert "## Item weights against the generator's true exposure" in (tmp_path / "goal2" / "goal2.md").read_text()
