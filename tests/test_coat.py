import math
import os

import numpy as np
import pytest
import recbole.data
import torch

import recbole_endo
from recbole_endo.data import coat
from recbole_endo.data.coat import convert_coat
from recbole_endo.data.uniform_slice import uniform_slice_mask

REAL_COAT = "/work/shared/data/coat"

# 4 users x 5 items. Users rate 5, 2, 1 and 3 items in train, 2 each in test.
TRAIN = [[3, 1, 4, 1, 5], [0, 2, 0, 0, 3], [0, 0, 0, 4, 0], [5, 0, 2, 0, 1]]
TEST = [[0, 0, 2, 0, 4], [1, 0, 0, 5, 0], [0, 3, 0, 0, 1], [0, 0, 0, 2, 3]]
USER_MAP = [
    "gender:men", "gender:women", "age:20-30", "age:over 60",
    "location:rural", "location:urban", "fashioninterest:not at all", "fashioninterest:very",
]
USER_FEATURES = [[0, 1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 1, 0, 1]]
ITEM_MAP = [
    "gender:men", "gender:women", "jackettype:bomber", "jackettype:parkas",
    "color:black", "color:navy", "onfrontpage:yes", "onfrontpage:no",
]
ITEM_FEATURES = [
    [1, 0, 1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 0, 0, 1],
    [0, 1, 1, 0, 0, 1, 1, 0], [1, 0, 1, 0, 0, 1, 0, 1],
]
LOAD_COL = {
    "inter": ["user_id", "item_id", "rating"],
    "user": ["user_id", "gender", "age", "location", "fashioninterest"],
    "item": ["item_id", "item_gender", "jackettype", "color", "onfrontpage"],
}


def matrix_text(rows):
    return "".join(" ".join(map(str, row)) + "\r\n" for row in rows)  # CRLF, like the real files


def make_raw(root, **texts):
    """A raw Coat folder from the small matrices above; ``texts`` replaces a file's content by key."""
    contents = {
        "train": matrix_text(TRAIN),
        "test": matrix_text(TEST),
        "user_features": matrix_text(USER_FEATURES),
        "user_map": "\r\n".join(USER_MAP),  # the real maps have no final newline
        "item_features": matrix_text(ITEM_FEATURES),
        "item_map": "\r\n".join(ITEM_MAP),
    }
    contents.update(texts)
    os.makedirs(os.path.join(root, coat.FEATURES_DIR), exist_ok=True)
    for key, text in contents.items():
        with open(os.path.join(root, coat.RAW_FILES[key]), "w", newline="") as f:
            f.write(text)
    return str(root)


def read_atomic(path):
    with open(path) as f:
        lines = f.read().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def ratings(path):
    """(user, item, rating) triples of an .inter file, as ints."""
    header, rows = read_atomic(path)
    assert header == ["user_id:token", "item_id:token", "rating:float"]
    return [(int(u), int(i), int(float(r))) for u, i, r in rows]


def nonzero(matrix):
    return {(u + 1, i + 1, r) for u, row in enumerate(matrix) for i, r in enumerate(row) if r}


@pytest.fixture
def converted(tmp_path):
    return convert_coat(make_raw(tmp_path / "raw"), str(tmp_path / "out"))


def test_user_and_item_files_hold_one_readable_token_per_group(converted):
    assert converted.endswith(os.path.join("out", "coat"))
    header, rows = read_atomic(os.path.join(converted, "coat.user"))
    assert header == ["user_id:token", "gender:token", "age:token", "location:token", "fashioninterest:token"]
    assert rows[0] == ["1", "women", "20-30", "urban", "not_at_all"]
    assert rows[1] == ["2", "men", "over_60", "rural", "very"]
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    header, rows = read_atomic(os.path.join(converted, "coat.item"))
    # gender is also a user field; RecBole has one field namespace, so the item one is prefixed.
    assert header == ["item_id:token", "item_gender:token", "jackettype:token", "color:token", "onfrontpage:token"]
    assert rows[1] == ["2", "women", "parkas", "navy", "no"]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("valid_share, expected", [(0.1, {1: 1, 2: 1, 4: 1}), (0.5, {1: 2, 2: 1, 4: 2})])
def test_train_ratings_are_split_per_user(tmp_path, valid_share, expected):
    folder = convert_coat(make_raw(tmp_path / "raw"), str(tmp_path / "out"), valid_share=valid_share)
    train = ratings(os.path.join(folder, "coat.train.inter"))
    valid = ratings(os.path.join(folder, "coat.valid.inter"))
    assert len(set(train)) == len(train) and len(set(valid)) == len(valid)
    assert not set(train) & set(valid)
    assert set(train) | set(valid) == nonzero(TRAIN)
    per_user = {u: sum(1 for v, _, _ in valid if v == u) for u in range(1, 5)}
    assert per_user == {u: expected.get(u, 0) for u in range(1, 5)}  # user 3 has one rating: train only
    assert {u for u, _, _ in train} == {1, 2, 3, 4}  # everyone keeps a train rating


def test_test_file_holds_every_nonzero_test_rating(converted):
    test = ratings(os.path.join(converted, "coat.test.inter"))
    assert len(test) == 8 and set(test) == nonzero(TEST)


def test_split_depends_only_on_the_seed(tmp_path):
    raw = make_raw(tmp_path / "raw")

    def files(seed, out):
        folder = convert_coat(raw, str(tmp_path / out), seed=seed)
        return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}

    first = files(1, "a")
    assert files(1, "b") == first
    others = [files(seed, f"seed{seed}") for seed in range(2, 8)]
    assert any(o["coat.valid.inter"] != first["coat.valid.inter"] for o in others)
    assert all(o["coat.test.inter"] == first["coat.test.inter"] for o in others)


def test_recbole_loads_and_builds_the_benchmark(converted, tmp_path):
    config = recbole_endo.Config(
        model="BPR",
        dataset="coat",
        config_dict={
            "data_path": str(tmp_path / "out"),
            "benchmark_filename": ["train", "valid", "test"],
            "load_col": LOAD_COL,
            "state": "ERROR",
        },
    )
    dataset = recbole.data.create_dataset(config)
    assert dataset.user_num == 4 + 1 and dataset.item_num == 5 + 1  # + RecBole's padding id
    assert set(dataset.field2id_token["gender"]) == {"[PAD]", "men", "women"}
    assert set(dataset.field2id_token["fashioninterest"]) == {"[PAD]", "not_at_all", "very"}
    train, valid, test = dataset.build()  # fails if user and item share a field name
    assert (train.inter_num, valid.inter_num, test.inter_num) == (8, 3, 8)


def test_command_line_prints_the_dataset_folder(tmp_path, capsys):
    coat.main([make_raw(tmp_path / "raw"), str(tmp_path / "out"), "--name", "c2", "--seed", "3"])
    folder = capsys.readouterr().out.strip()
    assert folder == str(tmp_path / "out" / "c2")
    assert sorted(os.listdir(folder)) == ["c2.item", "c2.test.inter", "c2.train.inter", "c2.user", "c2.valid.inter"]


def folder_files(folder):
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


def test_the_uniform_slice_is_a_seeded_share_drawn_per_rating():
    # The DR code's 5 % of Coat's 4,640 random ratings; at least one; none for share 0.
    assert uniform_slice_mask(4640, 0.05, 2020).sum() == 232
    assert uniform_slice_mask(10, 0.01, 1).sum() == 1 and not uniform_slice_mask(10, 0, 1).any()
    assert np.array_equal(uniform_slice_mask(100, 0.1, 3), uniform_slice_mask(100, 0.1, 3))
    assert not np.array_equal(uniform_slice_mask(100, 0.1, 3), uniform_slice_mask(100, 0.1, 4))
    # Per rating: over many seeds every one of 10 ratings is drawn about as often (a per-user draw
    # would move whole users).
    drawn = sum(uniform_slice_mask(10, 0.3, seed).astype(int) for seed in range(2000))
    assert drawn.sum() == 3 * 2000 and drawn.min() > 0.8 * 600 and drawn.max() < 1.2 * 600
    for share in (-0.1, 1, "0.05", True):
        with pytest.raises(ValueError, match=r"uniform_slice must be a share in \[0, 1\)"):
            uniform_slice_mask(10, share, 1)
    with pytest.raises(ValueError, match="takes 2 of the 2 random test ratings and leaves no test"):
        uniform_slice_mask(2, 0.9, 1)


def test_a_uniform_slice_moves_a_share_of_the_test_ratings_to_their_own_file(tmp_path):
    raw = make_raw(tmp_path / "raw")
    plain = convert_coat(raw, str(tmp_path / "plain"))
    folder = convert_coat(raw, str(tmp_path / "out"), uniform_slice=0.25)
    # round(0.25 * 8) = 2 of the 8 random ratings, drawn per rating in the files' order (user, then item).
    test = ratings(os.path.join(plain, "coat.test.inter"))
    sliced = uniform_slice_mask(8, 0.25, 2020)
    assert sliced.sum() == 2
    assert ratings(os.path.join(folder, "coat.uniform.inter")) == [row for row, out in zip(test, sliced) if out]
    assert ratings(os.path.join(folder, "coat.test.inter")) == [row for row, out in zip(test, sliced) if not out]
    # Everything else is as without the slice (the hold-out's draws are not the slice's).
    with_slice, without = folder_files(folder), folder_files(plain)
    assert sorted(with_slice) == sorted([*without, "coat.uniform.inter"])
    assert {name: with_slice[name] for name in without if name != "coat.test.inter"} == {
        name: text for name, text in without.items() if name != "coat.test.inter"
    }
    # Converting again without the option writes today's files, the slice's file gone.
    assert folder_files(convert_coat(raw, str(tmp_path / "out"))) == without
    with pytest.raises(ValueError, match="uniform_slice must be a share"):
        convert_coat(raw, str(tmp_path / "out"), uniform_slice=1.0)


def test_recbole_loads_the_benchmark_splits_and_not_the_uniform_slice(tmp_path):
    from recbole_endo.evaluation.protocols import candidate_lists

    raw = make_raw(tmp_path / "raw", train=matrix_text(SAMPLEABLE_TRAIN))
    config, splits = coat_splits(tmp_path, raw, model="MF", uniform_slice=0.25)
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert [split.inter_num for split in splits] == [7, 3, 6]  # the test without its 2 sliced ratings
    users, items, grades = candidate_lists(config, splits, "exposed")
    assert int((items > 0).sum()) == 6


def test_mfips_with_naive_bayes_reads_the_converted_slice(tmp_path):
    # Every pair randomly rated, each rating four times: 18 of the 20 in the slice hold every value.
    test = [[1, 2, 3, 4, 5], [2, 3, 4, 5, 1], [3, 4, 5, 1, 2], [4, 5, 1, 2, 3]]
    raw = make_raw(tmp_path / "raw", train=matrix_text(SAMPLEABLE_TRAIN), test=matrix_text(test))
    options = {"propensity": "naive_bayes", "tuned": False}
    config, splits = coat_splits(tmp_path, raw, model="MFIPS", uniform_slice=0.9, **options)
    train = [rating for _, _, rating in ratings(str(tmp_path / "out" / "coat" / "coat.train.inter"))]
    uniform = [rating for _, _, rating in ratings(str(tmp_path / "out" / "coat" / "coat.uniform.inter"))]
    assert len(uniform) == 18 and splits[2].inter_num == 2
    model = config.model_class(config, splits[0])
    # c_O(r) * N_U / (n_pairs * c_U(r)), n_pairs = 4 users x 5 items
    by_hand = [train.count(r) * len(uniform) / (20 * uniform.count(r)) for r in sorted(set(train))]
    assert model.propensity.rating_values.tolist() == sorted(set(train))
    assert model.propensity.table.tolist() == pytest.approx(by_hand)


def test_the_command_line_writes_the_uniform_slice(tmp_path, capsys):
    coat.main([make_raw(tmp_path / "raw"), str(tmp_path / "out"), "--uniform_slice", "0.25"])
    folder = capsys.readouterr().out.strip()
    assert len(ratings(os.path.join(folder, "coat.uniform.inter"))) == 2
    assert len(ratings(os.path.join(folder, "coat.test.inter"))) == 6
    with pytest.raises(SystemExit, match=r"uniform_slice must be a share in \[0, 1\), got 1\.5"):
        coat.main([make_raw(tmp_path / "raw"), str(tmp_path / "out"), "--uniform_slice", "1.5"])


@pytest.mark.skipif(not os.path.isdir(REAL_COAT), reason="raw Coat data not available")
def test_real_coat(tmp_path):
    folder = convert_coat(REAL_COAT, str(tmp_path / "out"))
    assert len(read_atomic(os.path.join(folder, "coat.user"))[1]) == 290
    assert len(read_atomic(os.path.join(folder, "coat.item"))[1]) == 300
    assert len(ratings(os.path.join(folder, "coat.test.inter"))) == 290 * 16
    observed = np.count_nonzero(np.loadtxt(os.path.join(REAL_COAT, "train.ascii")))
    train = ratings(os.path.join(folder, "coat.train.inter"))
    valid = ratings(os.path.join(folder, "coat.valid.inter"))
    assert len(train) + len(valid) == observed


@pytest.mark.skipif(not os.path.isdir(REAL_COAT), reason="raw Coat data not available")
def test_real_coat_exposed_protocols(tmp_path):
    from recbole_endo.evaluation.protocols import candidate_lists

    config, splits = coat_splits(tmp_path, REAL_COAT, model="BPR")
    counts = {}
    for protocol in ("exposed", "exposed_unselected"):
        users, items, grades = candidate_lists(config, splits, protocol)
        counts[protocol] = (int((items > 0).sum()), int((grades > 0).any(1).sum()))
    # Test ratings and users with a relevant item (rating >= 4): the variant drops the 366 random
    # pairs the user also self-selected, and with them every relevant item of 12 users.
    assert counts == {"exposed": (4640, 237), "exposed_unselected": (4274, 225)}
    # Selection is unchanged: the held-out self-selected ratings share no pair with training.
    validation = [candidate_lists(config, splits[:2], protocol) for protocol in ("exposed", "exposed_unselected")]
    assert all(torch.equal(a, b) for a, b in zip(*validation))


def test_missing_raw_dir_or_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_coat(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    raw = make_raw(tmp_path / "raw")
    os.remove(os.path.join(raw, coat.RAW_FILES["item_map"]))
    with pytest.raises(FileNotFoundError, match="item_features_map.txt"):
        convert_coat(raw, str(tmp_path / "out"))


two_genders = [[1, 1, 1, 0, 0, 1, 1, 0]]
BAD_INPUT = [
    ("train", matrix_text(TRAIN[:2] + [[0, 0, 4, 0]] + TRAIN[3:]), ["train.ascii", "line 3", "4 entries"]),
    ("test", matrix_text(TEST[:1] + [[1, 0, 0, 7, 0]] + TEST[2:]), ["test.ascii", "line 2", "7"]),
    ("test", matrix_text(TEST).replace("4", "4.5"), ["test.ascii", "line 1", "integers"]),
    ("test", matrix_text(TEST[:3]), ["test.ascii", "line 4", "3 rows"]),
    ("user_features", matrix_text(USER_FEATURES[:1] + two_genders + USER_FEATURES[2:]),
     ["user_features.ascii", "line 2", "'gender'"]),
    ("item_map", "\n".join(ITEM_MAP[:4] + ["color black"] + ITEM_MAP[5:]), ["item_features_map.txt", "line 5"]),
]


@pytest.mark.parametrize("key, text, fragments", BAD_INPUT, ids=[case[2][0] + case[2][1] for case in BAD_INPUT])
def test_bad_input_names_file_and_line(tmp_path, key, text, fragments):
    raw = make_raw(tmp_path / "raw", **{key: text})
    with pytest.raises(ValueError) as error:
        convert_coat(raw, str(tmp_path / "out"))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "out"
    bad = make_raw(tmp_path / "bad", test=matrix_text([[7] * 5] * 4))
    with pytest.raises(ValueError):
        convert_coat(bad, str(out))
    assert not out.exists() or not os.listdir(out)

    folder = convert_coat(make_raw(tmp_path / "raw"), str(out))
    before = {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)}
    with pytest.raises(ValueError):
        convert_coat(bad, str(out))

    def fail_midway(path, matrix):  # a write error after some files are written
        raise OSError("disk full")

    monkeypatch.setattr(coat, "write_inter", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        convert_coat(make_raw(tmp_path / "raw"), str(out), seed=5)
    assert os.listdir(out) == ["coat"]  # no temp folder left
    assert {name: open(os.path.join(folder, name)).read() for name in os.listdir(folder)} == before


# User 1 leaves item 4 unrated, so RecBole has a negative to sample for every user.
SAMPLEABLE_TRAIN = [[3, 1, 4, 0, 5]] + TRAIN[1:]


def coat_options(tmp_path, **options):
    """Options of a run on Coat converted to ``tmp_path/out``, checkpoints under ``tmp_path``."""
    return {"data_path": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR", **options}


def coat_splits(tmp_path, raw, model="TwoTowerSplit", uniform_slice=0.0, **options):
    """Config and RecBole (train, valid, test) datasets of Coat converted from ``raw`` (with
    ``uniform_slice``), with Coat's properties file and ``options``."""
    convert_coat(raw, str(tmp_path / "out"), uniform_slice=uniform_slice)
    config = recbole_endo.Config(model=model, dataset="coat", config_dict=coat_options(tmp_path, **options))
    dataset = recbole.data.create_dataset(config)
    return config, [split._dataset for split in recbole.data.data_preparation(config, dataset)]


def raw_lists(splits, lists):
    """``{raw user: {raw item: grade}}`` of :func:`candidate_lists`'s padded lists."""
    dataset = splits[0]
    result = {}
    for user, row_items, row_grades in zip(*(part.tolist() for part in lists)):
        for item, grade in zip(row_items, row_grades):
            if item:
                result.setdefault(dataset.id2token("user_id", user), {})[dataset.id2token("item_id", item)] = grade
    return result


def test_exposed_protocol_on_a_coat_slice(tmp_path):
    from recbole_endo.evaluation.protocols import candidate_lists
    from recbole_endo.quick_start import run_recbole_endo

    options = {
        "epochs": 1, "train_batch_size": 4, "embedding_size": 4, "mlp_hidden_size": [8, 4],
        "topk": [5], "valid_metric": "NDCG@5",  # 5 items: RecBole's full ranking cannot cut at 10
    }
    config, splits = coat_splits(tmp_path, make_raw(tmp_path / "raw", train=matrix_text(SAMPLEABLE_TRAIN)), **options)
    # By hand from TEST, grade = max(0, rating - 3): the standard protocol ranks every random test item.
    assert raw_lists(splits, candidate_lists(config, splits)) == {
        "1": {"3": 0, "5": 1}, "2": {"1": 0, "4": 2}, "3": {"2": 0, "5": 0}, "4": {"4": 0, "5": 0},
    }
    # The variant drops user 1's two test items and user 4's item 5, also in their self-selected ratings.
    assert raw_lists(splits, candidate_lists(config, splits, "exposed_unselected")) == {
        "2": {"1": 0, "4": 2}, "3": {"2": 0, "5": 0}, "4": {"4": 0},
    }
    run = run_recbole_endo(model="TwoTowerSplit", dataset="coat", config_dict=coat_options(tmp_path, **options))
    result = run["test_result"]
    # Coat's file reports both; every list fits in a top 5, so each relevant item is recalled.
    assert result["exposed:recall@5"] == 1.0 and result["exposed_unselected:recall@5"] == 1.0
    assert 0 < result["exposed:gndcg@5"] <= 1 and 0 < result["exposed_unselected:gndcg@5"] <= 1
    # per user, over the users with a relevant item: users 1 and 2, and user 2 in the variant
    assert sorted(run["per_user"]["exposed:ndcg@5"][0]) == ["1", "2"]
    assert sorted(run["per_user"]["exposed_unselected:ndcg@5"][0]) == ["2"]


def test_a_self_selected_random_item_is_ranked_by_the_standard_protocol_and_dropped_by_the_variant(tmp_path, monkeypatch):
    from recbole_endo.evaluation import protocols

    # User 2 self-selected items 2 and 5 (TRAIN) and gets random items 1 (rating 1), 4 (5) and 5 (4).
    test = [[0] * 5, [1, 0, 0, 5, 4], [0] * 5, [0] * 5]
    raw = make_raw(tmp_path / "raw", train=matrix_text(SAMPLEABLE_TRAIN), test=matrix_text(test))
    config, splits = coat_splits(tmp_path, raw, list_topk=[1, 5])
    dataset = splits[0]
    scores = torch.zeros(dataset.user_num, dataset.item_num)
    for item, score in {"1": 0.5, "4": 0.1, "5": 0.9}.items():
        scores[:, dataset.token2id("item_id", item)] = score
    monkeypatch.setattr(protocols, "score_test_rows", lambda model, splits, users: scores[users])
    standard = protocols.list_evaluation(config, None, splits)
    variant = protocols.list_evaluation(config, None, splits, protocol="exposed_unselected")

    def dcg(gains):
        return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))

    # Standard: items 5, 1, 4 in score order, relevant (rating >= 4) first and third, grades 1, 0, 2.
    assert standard["exposed:ndcg@1"] == 1.0
    assert standard["exposed:ndcg@5"] == pytest.approx(dcg([1, 0, 1]) / dcg([1, 1]), abs=1e-4)
    assert standard["exposed:gndcg@5"] == pytest.approx(dcg([1, 0, 3]) / dcg([3, 1]), abs=1e-4)
    # Variant: item 5 is dropped (user 2 self-selected it), items 1, 4 remain.
    assert variant["exposed_unselected:ndcg@1"] == 0.0
    assert variant["exposed_unselected:ndcg@5"] == pytest.approx(dcg([0, 1]), abs=1e-4)
    assert variant["exposed_unselected:gndcg@5"] == pytest.approx(dcg([0, 3]) / dcg([3]), abs=1e-4)
