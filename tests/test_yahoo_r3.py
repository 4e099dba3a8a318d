"""The Yahoo! R3 converter, on a small raw folder in the real files' format written here (the data's
licence forbids committing it); on the real files when YAHOO_R3_RAW names their folder."""

import os

import numpy as np
import pytest
import recbole.data

import recbole_endo
from recbole_endo.data import coat, yahoo_r3
from recbole_endo.data.uniform_slice import uniform_slice_mask
from recbole_endo.data.yahoo_r3 import RAW_FILES, convert_yahoo_r3

REAL_YAHOO_R3 = os.environ.get("YAHOO_R3_RAW", "")

# 5 users x 8 songs, in the README's order (by user, then song). Users 1-3 answered the survey and
# rated random songs; users 4 and 5 are non-survey users with self-selected ratings only. Every user
# leaves a song unrated (RecBole refuses to sample negatives otherwise).
TRAIN = [
    (1, 1, 5), (1, 2, 1), (1, 3, 4), (1, 5, 2), (1, 8, 3),
    (2, 2, 3), (2, 4, 5),
    (3, 6, 4),
    (4, 1, 1), (4, 3, 2), (4, 4, 5), (4, 6, 3), (4, 7, 4), (4, 8, 1),
    (5, 2, 2), (5, 5, 4), (5, 7, 5),
]
TEST = [(1, 4, 2), (1, 6, 5), (2, 1, 4), (2, 3, 4), (2, 8, 1), (3, 2, 1), (3, 5, 3), (3, 7, 5)]
SURVEY = [[5, 5, 4, 3, 5, 5, 2], [1, 2, 3, 4, 5, 1, 1], [3, 3, 3, 3, 3, 3, 2]]
SURVEY_FIELDS = ["rating_habit", "rates_hated", "rates_disliked", "rates_neutral", "rates_liked", "rates_loved", "preference_blind"]


def lines(rows, end="\n"):
    return "".join("\t".join(map(str, row)) + end for row in rows)


def make_raw(root, **texts):
    """A raw Yahoo! R3 folder from the rows above; ``texts`` replaces a file's content by key. The
    train file has Unix line ends (Webscope's archive), the others CRLF (copies found online)."""
    contents = {"train": lines(TRAIN), "test": lines(TEST, "\r\n"), "survey": lines(SURVEY, "\r\n")}
    contents.update(texts)
    os.makedirs(root, exist_ok=True)
    for key, text in contents.items():
        if text is not None:
            with open(os.path.join(root, RAW_FILES[key]), "w", newline="") as f:
                f.write(text)
    return str(root)


def read_atomic(path):
    with open(path) as f:
        header, *rows = f.read().splitlines()
    return header.split("\t"), [row.split("\t") for row in rows]


def ratings(path):
    """(user, song, rating) int triples of an .inter file, in file order."""
    header, rows = read_atomic(path)
    assert header == ["user_id:token", "item_id:token", "rating:float"]
    return [(int(u), int(i), int(float(r))) for u, i, r in rows]


def folder_files(folder):
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


@pytest.fixture
def converted(tmp_path):
    return convert_yahoo_r3(make_raw(tmp_path / "raw"), str(tmp_path / "out"))


def test_survey_answers_are_one_readable_token_per_question(converted):
    assert converted.endswith(os.path.join("out", "yahoo-r3"))
    assert sorted(os.listdir(converted)) == [
        "yahoo-r3.test.inter", "yahoo-r3.train.inter", "yahoo-r3.user", "yahoo-r3.valid.inter",  # songs: no .item
    ]
    header, rows = read_atomic(os.path.join(converted, "yahoo-r3.user"))
    assert header == ["user_id:token"] + [f"{field}:token" for field in SURVEY_FIELDS]
    # By hand from survey-questions.txt: answer k is the question's k-th choice.
    assert rows == [
        ["1", "few_per_day", "very_often", "often", "infrequently", "very_often", "very_often", "false"],
        ["2", "never", "very_infrequently", "infrequently", "often", "very_often", "never", "true"],
        ["3", "few_per_month"] + ["infrequently"] * 5 + ["false"],
    ]


# min(n - 1, max(1, round(share * n))) of each user's n self-selected ratings, n = 5, 2, 1, 6, 3
# (Python rounds halves to even: round(0.5) = 0, round(2.5) = 2, round(1.5) = 2).
@pytest.mark.parametrize("valid_share, expected", [(0.1, {1: 1, 2: 1, 4: 1, 5: 1}), (0.5, {1: 2, 2: 1, 4: 3, 5: 2})])
def test_self_selected_ratings_are_split_per_user(tmp_path, valid_share, expected):
    folder = convert_yahoo_r3(make_raw(tmp_path / "raw"), str(tmp_path / "out"), valid_share=valid_share)
    train = ratings(os.path.join(folder, "yahoo-r3.train.inter"))
    valid = ratings(os.path.join(folder, "yahoo-r3.valid.inter"))
    assert train == sorted(train) and valid == sorted(valid)  # by user, then song
    assert not set(train) & set(valid) and sorted(train + valid) == TRAIN
    assert {u: sum(1 for v, _, _ in valid if v == u) for u in range(1, 6)} == {u: expected.get(u, 0) for u in range(1, 6)}
    assert {u for u, _, _ in train} == {1, 2, 3, 4, 5}  # user 3 has one rating: train only


@pytest.mark.parametrize("seed", [1, 2, 3, 2020])
def test_the_hold_out_is_coats_rule(tmp_path, seed):
    """The same seeded draws as coat.split_train on the rating matrix: on the small folder and on a
    random one with users of 0 to 12 ratings (user ids with no rating in between)."""
    rng = np.random.default_rng(seed)
    matrix = np.where(rng.random((30, 12)) < rng.random((30, 1)) * 1.2, rng.integers(1, 6, (30, 12)), 0)
    small = np.zeros((5, 8), dtype=int)
    for user, song, rating in TRAIN:
        small[user - 1, song - 1] = rating
    for ratings_matrix in (small, matrix):
        rows = [(u + 1, i + 1, int(ratings_matrix[u, i])) for u, i in zip(*np.nonzero(ratings_matrix))]
        train, valid = yahoo_r3.split_train(rows, 0.3, seed)
        coat_train, coat_valid = coat.split_train(ratings_matrix, 0.3, seed)
        for part, expected in ((train, coat_train), (valid, coat_valid)):
            assert part == [(u + 1, i + 1, int(expected[u, i])) for u, i in zip(*np.nonzero(expected))]


def test_test_file_holds_every_random_rating(converted):
    assert ratings(os.path.join(converted, "yahoo-r3.test.inter")) == TEST


def test_split_depends_only_on_the_seed(tmp_path):
    raw = make_raw(tmp_path / "raw")

    def files(seed, out):
        return folder_files(convert_yahoo_r3(raw, str(tmp_path / out), seed=seed))

    first = files(1, "a")
    assert files(1, "b") == first
    others = [files(seed, f"seed{seed}") for seed in range(2, 8)]
    assert any(o["yahoo-r3.valid.inter"] != first["yahoo-r3.valid.inter"] for o in others)
    assert all(o["yahoo-r3.test.inter"] == first["yahoo-r3.test.inter"] for o in others)


def test_a_uniform_slice_moves_a_share_of_the_random_ratings_to_their_own_file(tmp_path):
    raw = make_raw(tmp_path / "raw")
    without = folder_files(convert_yahoo_r3(raw, str(tmp_path / "plain"), seed=7))
    folder = convert_yahoo_r3(raw, str(tmp_path / "out"), seed=7, uniform_slice=0.3)
    # round(0.3 * 8) = 2 of the 8 random ratings, drawn per rating by Coat's converter's rule.
    sliced = uniform_slice_mask(len(TEST), 0.3, 7)
    assert sliced.sum() == 2
    assert ratings(os.path.join(folder, "yahoo-r3.uniform.inter")) == [row for row, out in zip(TEST, sliced) if out]
    assert ratings(os.path.join(folder, "yahoo-r3.test.inter")) == [row for row, out in zip(TEST, sliced) if not out]
    with_slice = folder_files(folder)
    assert sorted(with_slice) == sorted([*without, "yahoo-r3.uniform.inter"])
    assert all(with_slice[name] == text for name, text in without.items() if name != "yahoo-r3.test.inter")
    config = recbole_endo.Config(model="MF", dataset="yahoo-r3", config_dict={"data_path": str(tmp_path / "out"), "state": "ERROR"})
    train, valid, test = recbole.data.create_dataset(config).build()  # the slice is no split
    assert (train.inter_num, valid.inter_num, test.inter_num) == (13, 4, 6)
    yahoo_r3.main([raw, str(tmp_path / "cli"), "--uniform_slice", "0.3", "--without_survey"])
    assert sorted(os.listdir(tmp_path / "cli" / "yahoo-r3")) == [
        "yahoo-r3.test.inter", "yahoo-r3.train.inter", "yahoo-r3.uniform.inter", "yahoo-r3.valid.inter",
    ]


def test_recbole_loads_the_benchmark_with_the_dataset_file(converted, tmp_path):
    config = recbole_endo.Config(model="BPR", dataset="yahoo-r3", config_dict={"data_path": str(tmp_path / "out"), "state": "ERROR"})
    assert config["benchmark_filename"] == ["train", "valid", "test"] and config["list_eval"] == "exposed"
    dataset = recbole.data.create_dataset(config)
    assert dataset.user_num == 5 + 1 and dataset.item_num == 8 + 1  # + RecBole's padding id
    assert set(dataset.field2id_token["preference_blind"]) == {"[PAD]", "true", "false"}
    users = dataset.get_user_feature()
    non_survey = [dataset.token2id("user_id", user) for user in ("4", "5")]
    assert all(int(users[field][non_survey].abs().sum()) == 0 for field in SURVEY_FIELDS)  # padded: no answers
    train, valid, test = dataset.build()
    assert (train.inter_num, valid.inter_num, test.inter_num) == (13, 4, 8)


def test_endo_decouple_decouples_the_user_tower_and_reads_songs_by_id(converted, tmp_path, caplog):
    from recbole_endo.model.towers import FeatureEmbedding
    from recbole_endo.quick_start import build

    options = {
        "data_path": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
        "epochs": 1, "train_batch_size": 8, "embedding_size": 4, "mlp_hidden_size": [8, 4],
        "topk": [5], "valid_metric": "exposed:gndcg",  # 8 songs: RecBole's full ranking cannot cut at 10
    }
    _, model, trainer, (train_data, valid_data, test_data) = build(
        recbole_endo.Config(model="EndoDecouple", dataset="yahoo-r3", config_dict=options))
    assert model.endo_fields == {"user": {"atom": ["user_id"], "side": SURVEY_FIELDS}, "item": {"atom": ["item_id"], "side": []}}
    assert model.towers["user"].decoupled and not model.towers["item"].decoupled
    (item_embedding,) = [m for m in model.towers["item"].modules() if isinstance(m, FeatureEmbedding)]
    assert item_embedding.fields == ["item_id"]
    user_fields = sorted(f for m in model.towers["user"].modules() if isinstance(m, FeatureEmbedding) for f in m.fields)
    assert user_fields == sorted(["user_id"] + SURVEY_FIELDS)
    trainer.fit(train_data, valid_data, saved=False)
    components = trainer.loss_component_history[0]
    assert "user_side_ssl" in components and not [name for name in components if name.startswith("item_")]
    result = trainer.evaluate(test_data, load_best_model=False)
    assert all(np.isfinite(value) for value in result.values())


def test_command_line_prints_the_dataset_folder(tmp_path, capsys):
    yahoo_r3.main([make_raw(tmp_path / "raw"), str(tmp_path / "out"), "--name", "y2", "--seed", "3"])
    folder = capsys.readouterr().out.strip()
    assert folder == str(tmp_path / "out" / "y2")
    assert sorted(os.listdir(folder)) == ["y2.test.inter", "y2.train.inter", "y2.user", "y2.valid.inter"]


def test_without_the_survey_file_it_is_named_unless_left_out_on_purpose(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw", survey=None)
    with pytest.raises(FileNotFoundError, match="survey-answers.txt.*--without_survey"):
        convert_yahoo_r3(raw, str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="survey-answers.txt"):
        yahoo_r3.main([raw, str(tmp_path / "out")])
    folder = convert_yahoo_r3(raw, str(tmp_path / "out"), survey=False)
    assert sorted(os.listdir(folder)) == ["yahoo-r3.test.inter", "yahoo-r3.train.inter", "yahoo-r3.valid.inter"]
    assert ratings(os.path.join(folder, "yahoo-r3.test.inter")) == TEST
    yahoo_r3.main([raw, str(tmp_path / "cli"), "--without_survey"])
    assert "yahoo-r3.user" not in os.listdir(capsys.readouterr().out.strip())


def test_without_the_survey_endo_decouple_runs_with_id_towers(tmp_path):
    """docs/protocols.md: without the answers, endo_fields names the ids alone (the file's user fields do not exist)."""
    from recbole_endo.quick_start import build

    convert_yahoo_r3(make_raw(tmp_path / "raw", survey=None), str(tmp_path / "out"), survey=False)
    options = {
        "data_path": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
        "epochs": 1, "embedding_size": 4, "mlp_hidden_size": [8, 4], "topk": [5],
    }
    config = recbole_endo.Config(model="EndoDecouple", dataset="yahoo-r3", config_dict=options)
    with pytest.raises(ValueError, match="endo_fields.user.side names field 'rating_habit'"):
        build(config)
    options["endo_fields"] = {"user": {"atom": ["user_id"]}, "item": {"atom": ["item_id"]}}
    _, model, trainer, (train_data, valid_data, _) = build(
        recbole_endo.Config(model="EndoDecouple", dataset="yahoo-r3", config_dict=options))
    assert not model.towers["user"].decoupled and not model.towers["item"].decoupled
    trainer.fit(train_data, valid_data, saved=False)
    assert np.isfinite(trainer.train_loss_dict[0])


def test_missing_raw_dir_or_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_yahoo_r3(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="v1_0-test.txt"):
        convert_yahoo_r3(make_raw(tmp_path / "raw", test=None), str(tmp_path / "out"))


BAD_INPUT = [
    ("train", lines(TRAIN[:3]) + "1\t5\n" + lines(TRAIN[4:]), ["train.txt", "line 4", "2 fields"]),
    ("train", lines(TRAIN).replace("4\t7\t4", "4\t7\t4.5"), ["train.txt", "line 13", "integers"]),
    ("train", lines(TRAIN[:8] + [(0, 2, 3)] + TRAIN[8:]), ["train.txt", "line 9", "ids start at 1"]),
    ("train", lines(TRAIN[:6] + [(1, 3, 2)] + TRAIN[6:]), ["train.txt", "line 7", "song 3 already on line 3"]),
    ("train", "", ["train.txt", "no ratings"]),
    ("test", lines(TEST[:3] + [(2, 3, 6)] + TEST[4:], "\r\n"), ["test.txt", "line 4", "rating 6 outside 1..5"]),
    ("test", lines(TEST + [(4, 1, 3)], "\r\n"), ["test.txt", "line 9", "user 4", "no survey answers", "users 1..3"]),
    ("survey", lines(SURVEY[:1] + [[1, 2, 3, 4, 5, 1, 3]] + SURVEY[2:], "\r\n"), ["survey-answers.txt", "line 2", "'preference_blind'", "1..2"]),
    ("survey", lines(SURVEY[:2] + [[3, 3, 3, 3, 3, 3]], "\r\n"), ["survey-answers.txt", "line 3", "6 answers"]),
    ("survey", lines([[0, 1, 1, 1, 1, 1, 1]] + SURVEY[1:], "\r\n"), ["survey-answers.txt", "line 1", "'rating_habit'"]),
]


@pytest.mark.parametrize("key, text, fragments", BAD_INPUT, ids=[" ".join(case[2][1:3]) for case in BAD_INPUT])
def test_bad_input_names_file_and_line(tmp_path, key, text, fragments):
    raw = make_raw(tmp_path / "raw", **{key: text})
    with pytest.raises(ValueError) as error:
        convert_yahoo_r3(raw, str(tmp_path / "out"))
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_failed_conversion_leaves_the_previous_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    folder = convert_yahoo_r3(make_raw(tmp_path / "raw"), str(out))
    before = folder_files(folder)
    bad = make_raw(tmp_path / "bad", test=lines([(1, 1, 9)]))
    with pytest.raises(ValueError):
        convert_yahoo_r3(bad, str(out))

    def fail_midway(path, rows):  # a write error after the .user file is written
        raise OSError("disk full")

    monkeypatch.setattr(yahoo_r3, "write_inter", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        convert_yahoo_r3(make_raw(tmp_path / "raw"), str(out), seed=5)
    assert os.listdir(out) == ["yahoo-r3"]  # no temp folder left
    assert folder_files(folder) == before


@pytest.mark.skipif(not os.path.isdir(REAL_YAHOO_R3), reason="raw Yahoo! R3 not available (set YAHOO_R3_RAW)")
def test_real_yahoo_r3_has_the_published_counts(tmp_path):
    folder = convert_yahoo_r3(REAL_YAHOO_R3, str(tmp_path / "out"))
    train = ratings(os.path.join(folder, "yahoo-r3.train.inter"))
    valid = ratings(os.path.join(folder, "yahoo-r3.valid.inter"))
    test = ratings(os.path.join(folder, "yahoo-r3.test.inter"))
    assert len(train) + len(valid) == 311704 and len(test) == 54000
    assert len({u for u, _, _ in train}) == 15400 and len({i for _, i, _ in train + valid + test}) == 1000
    assert len({u for u, _, _ in test}) == 5400 and len(read_atomic(os.path.join(folder, "yahoo-r3.user"))[1]) == 5400
    # each user has 10+ ratings, so round(0.1 n) >= 1: every user is validated
    assert len({u for u, _, _ in valid}) == 15400


def test_rel_mf_clicks_are_the_ratings_of_four_and_more(converted, tmp_path):
    """Saito et al.'s setting on this dataset: a self-selected rating below 4 is a non-click."""
    from recbole_endo.quick_start import build

    options = {"data_path": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR",
               "train_batch_size": 64, "embedding_size": 4}
    _, model, _, (train_data, _, _) = build(recbole_endo.Config(model="RelMF", dataset="yahoo-r3", config_dict=options))
    batch = next(iter(train_data))
    rated = batch["label"] == 1  # training rows; the sampler's rows are label 0 and carry their positive's rating
    assert rated.sum() == 13 and (~rated).sum() == 13
    expected = [float(r >= 4) for r in batch["rating"][rated].tolist()]
    assert model.clicks(batch)[rated].tolist() == expected and 0 < sum(expected) < 13
    assert model.clicks(batch)[~rated].sum() == 0
