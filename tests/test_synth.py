import itertools
import json
import os

import numpy as np
import pytest
import yaml

import recbole_endo
from recbole_endo.data import preparers, synth
from recbole_endo.quick_start import run_recbole_endo
from recbole_endo.data.synth import (
    DEFAULT_OPTIONS,
    generate_synth,
    load_truth,
    prepare_dataset,
    sample_new_items,
    true_rating,
)

PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recbole_endo", "properties")
TINY = {"users": 50, "items": 40, "interactions": 1000, "user_groups": 4, "item_categories": 5}
TINY_CONFIG = {synth.CONFIG_KEYS[name]: value for name, value in TINY.items()}
FILES = [f"endo-synth.{part}" for part in ("item", "options.json", "test.inter", "train.inter", "truth.npz", "user", "valid.inter")]


def contents(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def pairs(folder, part):
    """(user index, item index, rating) rows of one .inter file, 0-based as the truth arrays."""
    rows = np.loadtxt(os.path.join(folder, f"endo-synth.{part}.inter"), skiprows=1, ndmin=2, dtype=int)
    return rows[:, 0] - 1, rows[:, 1] - 1, rows[:, 2]


def synth_config(tmp_path, **options):
    """A Config of endo-synth with tiny sizes, data under tmp_path/data; ``options`` are synth_* keys."""
    config_dict = {"data_path": str(tmp_path / "data"), "state": "ERROR"} | TINY_CONFIG | options
    return recbole_endo.Config(model="BPR", dataset="endo-synth", config_dict=config_dict)


def test_files_depend_only_on_the_options(tmp_path):
    first = generate_synth(str(tmp_path / "a"), **TINY, seed=1)
    assert sorted(os.listdir(first)) == FILES
    assert contents(generate_synth(str(tmp_path / "b"), **TINY, seed=1)) == contents(first)
    other = contents(generate_synth(str(tmp_path / "c"), **TINY, seed=2))
    for name, data in contents(first).items():
        if name != "endo-synth.options.json":
            assert other[name] != data, name


def test_splits_are_complete_and_disjoint(tmp_path):
    folder = generate_synth(str(tmp_path), **TINY, test_items_per_user=16)
    train, valid, test = (set(zip(*pairs(folder, part)[:2])) for part in ("train", "valid", "test"))
    assert len(train) + len(valid) == TINY["interactions"]
    assert not train & valid and not (train | valid) & test
    assert {user for user, _ in train} == set(range(TINY["users"]))  # every user can be trained
    test_users = np.array([user for user, _ in test])
    assert np.bincount(test_users, minlength=TINY["users"]).tolist() == [16] * TINY["users"]
    assert 0.05 < len(valid) / TINY["interactions"] < 0.15


def test_ratings_are_the_true_ones_and_the_observed_ones_are_self_selected(tmp_path):
    folder = generate_synth(str(tmp_path), users=400, items=200, interactions=20000, user_groups=4, item_categories=5)
    truth = load_truth(folder)
    for part in ("train", "valid", "test"):
        users, items, ratings = pairs(folder, part)
        assert (ratings == true_rating(truth, users, items)).all(), part
    # Over all user-item pairs, the quantile cut points give 40/20/15/15/10 % of ratings 1..5.
    every_rating = true_rating(truth, *np.divmod(np.arange(400 * 200), 200)).reshape(400, 200)
    assert np.allclose(np.bincount(every_rating.ravel())[1:] / every_rating.size, [0.4, 0.2, 0.15, 0.15, 0.1], atol=1e-3)
    # The test is uniform among each user's unseen items (which users like less than average).
    unseen = np.ones_like(every_rating, dtype=bool)
    for part in ("train", "valid"):
        users, items, _ = pairs(folder, part)
        unseen[users, items] = False
    test_ratings = pairs(folder, "test")[2]
    shares = np.bincount(test_ratings, minlength=6)[1:] / len(test_ratings)
    expected = np.mean([np.bincount(row[seen], minlength=6)[1:] / seen.sum() for row, seen in zip(every_rating, unseen)], 0)
    assert np.allclose(shares, expected, atol=0.02)
    # Users keep what they like: observed ratings are higher than uniformly exposed ones.
    assert pairs(folder, "train")[2].mean() > test_ratings.mean() + 0.5


def test_without_atom_share_the_truth_is_the_side_features(tmp_path):
    folder = generate_synth(str(tmp_path), **TINY, atom_share=0.0)
    truth = load_truth(folder)
    users, items, ratings = pairs(folder, "test")
    side = truth["user_group"][users] * TINY["item_categories"] + truth["item_category"][items]
    for value in np.unique(side):
        assert len(set(ratings[side == value])) == 1


def top_share(items, top_items):
    return np.isin(items, top_items).mean()


def test_exposure_skews_training_but_not_the_test(tmp_path):
    train_shares = []
    for skew in (0.0, 1.0, 2.0):
        folder = generate_synth(str(tmp_path / str(skew)), users=300, items=100, interactions=6000, skew=skew)
        exposure = load_truth(folder)["item_exposure"]
        top = np.argsort(-exposure)[:10]  # the 10 % most exposed items
        train_shares.append(top_share(pairs(folder, "train")[1], top))
        test_share = top_share(pairs(folder, "test")[1], top)
        assert test_share < 0.12, skew  # uniform among unseen items; popular ones are seen more often
    assert train_shares[0] < 0.2 < train_shares[1] < train_shares[2]
    assert train_shares[2] > 0.4


@pytest.mark.parametrize("counts", [2, 3], ids=["stream", "gumbel"])
def test_sampler_draws_by_successive_sampling(counts):
    """Both ways of drawing (simulated exposures; Gumbel top-k when a user needs many draws) give
    the exact inclusion probabilities of successive sampling with weights exposure * keep."""
    exposure = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    keep = np.array([0.2, 0.5, 0.9, 0.9, 0.5, 1.0])
    weights = exposure * keep
    expected = np.zeros(len(weights))
    for sequence in itertools.permutations(range(len(weights)), counts):
        probability, left = 1.0, weights.sum()
        for item in sequence:
            probability *= weights[item] / left
            left -= weights[item]
        expected[list(sequence)] += probability
    users = 20000
    keys = sample_new_items(
        np.random.default_rng(0),
        np.full(users, counts),
        np.zeros(0, np.int64),
        len(weights),
        exposure=exposure,
        log_keep=lambda _, items: np.log(keep[items]),
    )
    assert len(np.unique(keys)) == users * counts and (keys // len(weights) < users).all()
    frequency = np.bincount(keys % len(weights), minlength=len(weights)) / users
    assert np.allclose(frequency, expected, atol=4 * np.sqrt(0.25 / users))


def test_dense_requests_keep_enough_unseen_items_for_the_test(tmp_path):
    largest = TINY["users"] * (TINY["items"] - 16 - 1)
    folder = generate_synth(str(tmp_path), **TINY | {"interactions": largest}, skew=3.0)
    observed = set(zip(*pairs(folder, "train")[:2])) | set(zip(*pairs(folder, "valid")[:2]))
    test = set(zip(*pairs(folder, "test")[:2]))
    assert len(observed) == largest and len(test) == TINY["users"] * 16 and not observed & test


BAD_OPTIONS = [
    ({"interactions": 50 * (40 - 16 - 1) + 1}, "synth_interactions"),
    ({"interactions": 49}, "synth_interactions"),
    ({"interactions": 1000.5}, "synth_interactions"),
    ({"skew": -0.5}, "synth_skew"),
    ({"atom_share": 1.5}, "synth_atom_share"),
    ({"users": 0}, "synth_users"),
    ({"test_items_per_user": 39}, "synth_test_items"),
    ({"user_groups": 51}, "synth_user_groups"),
    ({"user_groups": 1, "item_categories": 1}, "synth_item_categories"),
    ({"valid_share": 1.0}, "synth_valid_share"),
    ({"seed": -1}, "synth_seed"),
    ({"size": 3}, "size"),
]


@pytest.mark.parametrize("options, name", BAD_OPTIONS, ids=[str(options) for options, _ in BAD_OPTIONS])
def test_bad_options_are_named(tmp_path, options, name):
    with pytest.raises(ValueError, match=name):
        generate_synth(str(tmp_path / "out"), **TINY | options)
    assert not (tmp_path / "out").exists()


def test_bad_config_option_is_named(tmp_path):
    with pytest.raises(ValueError, match="synth_skew"):
        prepare_dataset(synth_config(tmp_path, synth_skew=-1))


def test_dataset_yaml_defaults_are_the_generators():
    with open(os.path.join(PROPERTIES, "dataset", "endo-synth.yaml")) as f:
        defaults = yaml.safe_load(f)
    assert {name: defaults[key] for name, key in synth.CONFIG_KEYS.items()} == DEFAULT_OPTIONS


def test_prepare_generates_once_and_again_when_options_change(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "endo-synth"
    prepare_dataset(synth_config(tmp_path))
    first = contents(folder)
    assert json.loads(first["endo-synth.options.json"]) == {"generator_version": 1} | DEFAULT_OPTIONS | TINY
    generated = []
    monkeypatch.setattr(synth, "generate_synth", lambda *args, **options: generated.append(options))
    prepare_dataset(synth_config(tmp_path))
    assert generated == []  # up to date: left alone
    monkeypatch.undo()
    prepare_dataset(synth_config(tmp_path, synth_skew=2.0))
    changed = contents(folder)
    assert json.loads(changed["endo-synth.options.json"])["skew"] == 2.0
    assert changed["endo-synth.train.inter"] != first["endo-synth.train.inter"]
    os.remove(folder / "endo-synth.test.inter")  # a missing file is regenerated too
    prepare_dataset(synth_config(tmp_path, synth_skew=2.0))
    assert contents(folder) == changed
    assert sorted(os.listdir(tmp_path / "data")) == ["endo-synth"]  # no temporary folder left


def test_a_run_prepares_endo_synth_and_leaves_other_datasets_alone(tmp_path):
    assert preparers.DATASET_PREPARERS == {"endo-synth": prepare_dataset}
    config = recbole_endo.Config(model="BPR", dataset="tiny", config_dict={"data_path": str(tmp_path / "data")})
    preparers.prepare_dataset(config)
    assert not (tmp_path / "data").exists()
    preparers.prepare_dataset(synth_config(tmp_path))
    assert sorted(os.listdir(tmp_path / "data" / "endo-synth")) == FILES


def test_prepare_leaves_a_split_made_from_endo_synth_alone(tmp_path):
    prepare_dataset(synth_config(tmp_path, benchmark_filename=["cold_item.train", "cold_item.valid", "cold_item.test"]))
    assert not (tmp_path / "data").exists()


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "out"
    folder = generate_synth(str(out), **TINY)
    before = contents(folder)
    written, write = [], synth.write_atomic_file

    def fail_on_third_file(path, header, rows):  # a write error after some files are written
        written.append(path)
        if len(written) % 3 == 0:
            raise OSError("disk full")
        write(path, header, rows)

    monkeypatch.setattr(synth, "write_atomic_file", fail_on_third_file)
    with pytest.raises(OSError, match="disk full"):
        generate_synth(str(out), **TINY, seed=5)
    assert os.listdir(out) == ["endo-synth"] and contents(folder) == before
    with pytest.raises(OSError, match="disk full"):
        generate_synth(str(tmp_path / "fresh"), **TINY)
    assert os.listdir(tmp_path / "fresh") == []


def test_command_line_prints_the_dataset_folder(tmp_path, capsys):
    synth.main([str(tmp_path), "--name", "s2", "--users=50", "--items=40", "--interactions=900", "--user_groups=4",
                "--skew=0.5", "--test_items=8", "--seed=3"])
    folder = capsys.readouterr().out.strip()
    assert folder == str(tmp_path / "s2")
    with open(os.path.join(folder, "s2.options.json")) as f:
        options = json.load(f)
    assert (options["interactions"], options["skew"], options["test_items_per_user"], options["seed"]) == (900, 0.5, 8, 3)
    with pytest.raises(SystemExit, match="synth_skew"):
        synth.main([str(tmp_path), "--skew=-1"])


def test_quick_start_generates_and_runs_endo_synth(tmp_path):
    config_dict = {
        "data_path": str(tmp_path / "data"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1,
        "train_batch_size": 256,
        "embedding_size": 8,
        "mlp_hidden_size": [16, 8],
        "state": "ERROR",
    } | TINY_CONFIG
    result = run_recbole_endo(model="TwoTowerSplit", dataset="endo-synth", config_dict=config_dict)
    assert sorted(os.listdir(tmp_path / "data" / "endo-synth")) == FILES
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert any(key.startswith("exposed:") for key in result["test_result"])  # the yaml's list_eval: exposed
