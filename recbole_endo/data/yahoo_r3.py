"""Convert the raw Yahoo! R3 dataset (Marlin and Zemel, 2009; Yahoo! Webscope) to RecBole atomic files.

Yahoo! R3 rates 1,000 songs on 1-5 stars from two sources: ratings users chose to give in Yahoo!
Music (``...-train.txt``, 15,400 users) and ratings of 10 songs drawn at random for each of 5,400
survey participants (``...-test.txt``); the survey participants also answered seven multiple
choice questions about when they rate (``...-survey-answers.txt``, line n = user n). As for Coat
(``recbole_endo.data.coat``), the benchmark split is fixed on disk: the self-selected ratings are
split into train/valid per user (the same seeded hold-out rule), the random ones are the test.
The survey answers are the users' side fields, one token per question; songs have no feature, so
no ``.item`` file is written and the item tower reads the song id alone. Ids are the raw 1-based
user and song numbers, so results can be joined back to the raw files. ``--uniform_slice SHARE``
(default 0: none) moves a seeded share of the random ratings, drawn per rating, to
``<name>.uniform.inter`` for ``propensity: naive_bayes`` (:mod:`recbole_endo.data.uniform_slice`,
shared with Coat's converter); the test then lacks them.

    python -m recbole_endo.data.yahoo_r3 RAW_DIR OUT_DIR [--name yahoo-r3] [--valid_share 0.1] [--seed 2020] [--uniform_slice 0] [--without_survey]

The licence (Webscope's data sharing agreement) forbids redistribution: the data is never committed.
"""

import argparse
import os
import sys

import numpy as np

from recbole_endo.data.coat import read_lines
from recbole_endo.data.uniform_slice import UNIFORM_PART, check_uniform_share, uniform_slice_mask
from recbole_endo.files import dataset_folder, write_atomic_file

PREFIX = "ydata-ymusic-rating-study-v1_0-"
RAW_FILES = {
    "train": PREFIX + "train.txt",
    "test": PREFIX + "test.txt",
    "survey": PREFIX + "survey-answers.txt",
}
MAX_RATING = 5
_FREQUENCY = ["never", "very_infrequently", "infrequently", "often", "very_often"]
# The seven questions of ydata-ymusic-rating-study-v1_0-survey-questions.txt, in its order: the user
# field each answer is written to, and the answers' tokens (an answer is coded 1..len(answers)).
SURVEY_FIELDS = [
    # "I rate music I hear on LAUNCHcast Radio:"
    ("rating_habit", ["never", "few_since_signup", "few_per_month", "few_per_week", "few_per_day"]),
    ("rates_hated", _FREQUENCY),  # "If I hear a song I hate I choose to rate it:"
    ("rates_disliked", _FREQUENCY),  # "... a song I don't like ..."
    ("rates_neutral", _FREQUENCY),  # "... a song I feel neutral about ..."
    ("rates_liked", _FREQUENCY),  # "... a song I like ..."
    ("rates_loved", _FREQUENCY),  # "... a song I love ..."
    # "My preferences for a song do not affect whether I choose to rate it:" True / False
    ("preference_blind", ["true", "false"]),
]


def read_ratings(path, surveyed=None):
    """``(user, song, rating)`` int rows of a ``user<TAB>song<TAB>rating`` file, sorted by user then
    song; errors give file and line (a pair rated twice names both lines). With ``surveyed``, every
    user must be a survey participant (1..``surveyed``), as the README says of the random ratings:
    one without answers means the files do not belong together."""
    rows, first_line = [], {}
    for number, line in enumerate(read_lines(path), 1):
        fields = line.split()
        if len(fields) != 3:
            raise ValueError(f"{path}, line {number}: {len(fields)} fields, expected 3 (user, song, rating): {line.strip()[:60]!r}")
        try:
            user, song, rating = (int(field) for field in fields)
        except ValueError:
            raise ValueError(f"{path}, line {number}: user, song and rating must be integers, got {line.strip()[:60]!r}") from None
        if user < 1 or song < 1:
            raise ValueError(f"{path}, line {number}: ids start at 1, got user {user}, song {song}")
        if not 1 <= rating <= MAX_RATING:
            raise ValueError(f"{path}, line {number}: rating {rating} outside 1..{MAX_RATING}")
        if surveyed is not None and user > surveyed:
            raise ValueError(
                f"{path}, line {number}: user {user} has random ratings but no survey answers "
                f"({RAW_FILES['survey']} answers for users 1..{surveyed})"
            )
        earlier = first_line.setdefault((user, song), number)
        if earlier != number:
            raise ValueError(f"{path}, line {number}: user {user} rated song {song} already on line {earlier}")
        rows.append((user, song, rating))
    if not rows:
        raise ValueError(f"{path}: no ratings")
    return sorted(rows)


def read_survey(path):
    """One list of answer tokens per line (line n = user n); errors give file and line."""
    records = []
    for number, line in enumerate(read_lines(path), 1):
        fields = line.split()
        if len(fields) != len(SURVEY_FIELDS):
            raise ValueError(f"{path}, line {number}: {len(fields)} answers, expected {len(SURVEY_FIELDS)}")
        record = []
        for (name, answers), field in zip(SURVEY_FIELDS, fields):
            if not (field.isdigit() and 1 <= int(field) <= len(answers)):
                raise ValueError(f"{path}, line {number}: answer {field!r} to '{name}' outside 1..{len(answers)}")
            record.append(answers[int(field) - 1])
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no answers")
    return records


def split_train(rows, valid_share, seed):
    """Coat's per-user hold-out (``coat.split_train``) on sorted ``(user, song, rating)`` rows: users
    in id order, each with 2+ ratings draws ``min(n - 1, max(1, round(valid_share * n)))`` of its
    songs by one ``rng.permutation`` of them in song order, so a rating matrix gives the same
    hold-out under both converters. Returns (train rows, valid rows)."""
    rng = np.random.default_rng(seed)
    users = np.array([user for user, _, _ in rows])
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    held = np.zeros(len(rows), dtype=bool)
    for start, end in zip(starts, np.r_[starts[1:], len(rows)]):
        count = end - start
        if count >= 2:
            held[rng.permutation(np.arange(start, end))[: min(count - 1, max(1, round(valid_share * count)))]] = True
    return [row for row, out in zip(rows, held) if not out], [row for row, out in zip(rows, held) if out]


def write_inter(path, rows):
    write_atomic_file(path, ["user_id:token", "item_id:token", "rating:float"], rows)


def convert_yahoo_r3(raw_dir, out_dir, dataset_name="yahoo-r3", valid_share=0.1, seed=2020, survey=True, uniform_slice=0.0):
    """Write ``out_dir/dataset_name/`` with .train/.valid/.test.inter and (``survey``) .user; return its path.
    With ``uniform_slice`` > 0, that share of the random ratings (drawn per rating, seeded by ``seed``)
    goes to .uniform.inter instead of .test.inter (:mod:`recbole_endo.data.uniform_slice`).

    All input is read and checked before anything is written, so bad input leaves ``out_dir`` as it was.
    """
    if not 0 <= valid_share < 1:
        raise ValueError(f"valid_share must be in [0, 1), got {valid_share}")
    check_uniform_share(uniform_slice)
    if not os.path.isdir(raw_dir):
        raise FileNotFoundError(f"Yahoo! R3 raw folder not found: {raw_dir}")
    paths = {key: os.path.join(raw_dir, name) for key, name in RAW_FILES.items() if survey or key != "survey"}
    for key, path in paths.items():
        if not os.path.isfile(path):
            hint = " (--without_survey converts without the users' answers)" if key == "survey" else ""
            raise FileNotFoundError(f"Yahoo! R3 raw file not found: {path}{hint}")

    train = read_ratings(paths["train"])
    answers = read_survey(paths["survey"]) if survey else None
    test = read_ratings(paths["test"], len(answers) if survey else None)
    train_part, valid_part = split_train(train, valid_share, seed)
    parts = [("train", train_part), ("valid", valid_part)]
    if uniform_slice:
        sliced = uniform_slice_mask(len(test), uniform_slice, seed)
        parts.append((UNIFORM_PART, [row for row, out in zip(test, sliced) if out]))
        test = [row for row, out in zip(test, sliced) if not out]
    parts.append(("test", test))

    target = os.path.join(out_dir, dataset_name)
    with dataset_folder(target) as work:
        if survey:
            header = ["user_id:token"] + [f"{name}:token" for name, _ in SURVEY_FIELDS]
            rows = ([user] + record for user, record in enumerate(answers, 1))
            write_atomic_file(os.path.join(work, f"{dataset_name}.user"), header, rows)
        for part, rows in parts:
            write_inter(os.path.join(work, f"{dataset_name}.{part}.inter"), rows)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert raw Yahoo! R3 to RecBole atomic (benchmark) files.")
    parser.add_argument("raw_dir", help=f"folder with {', '.join(RAW_FILES.values())}")
    parser.add_argument("out_dir", help="RecBole data_path; the dataset folder is written inside it")
    parser.add_argument("--name", default="yahoo-r3", help="dataset name (folder and file prefix)")
    parser.add_argument("--valid_share", type=float, default=0.1, help="share of each user's self-selected ratings held out")
    parser.add_argument("--seed", type=int, default=2020, help="seed of the train/valid split (and of the uniform slice)")
    parser.add_argument("--uniform_slice", type=float, default=0.0,
                        help="share of the random ratings (drawn per rating) written to <name>.uniform.inter "
                             "instead of the test, for propensity naive_bayes; 0 (default): none")
    parser.add_argument("--without_survey", action="store_true",
                        help="no survey answers file: write no .user file (run with a user tower of ids, see docs/protocols.md)")
    args = parser.parse_args(argv)
    try:
        print(convert_yahoo_r3(args.raw_dir, args.out_dir, args.name, args.valid_share, args.seed, not args.without_survey,
                               args.uniform_slice))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
