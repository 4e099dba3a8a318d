"""Paired differences against hand computations; per-user values that average to the reported
metrics; the comparison runner's paired table."""

import csv
import gzip

import numpy as np
import pytest

from recbole_endo.experiments.compare import compare
from recbole_endo.experiments.paired import format_difference, paired_difference, paired_values


def test_paired_values_match_users_by_seed_and_id():
    entry = {(1, "u2"): 0.5, (1, "u1"): 0.2, (2, "u1"): 0.4, (1, "u3"): 0.9}
    reference = {(1, "u1"): 0.1, (1, "u2"): 0.3, (2, "u1"): 0.1}  # no u3: it is not a pair
    values, base = paired_values(entry, reference)
    assert values.tolist() == [0.2, 0.5, 0.4] and base.tolist() == [0.1, 0.3, 0.1]


def test_mean_difference_and_exact_wilcoxon_p_equal_a_hand_computation():
    # Differences 1, 2, 3, −4, 5: rank sum of the negative ones 4; of the 2^5 sign patterns, 7
    # have a negative rank sum ≤ 4 ({}, {1}, {2}, {3}, {4}, {1,2}, {1,3}): p = 2 · 7/32.
    reference = np.zeros(5)
    cell = paired_difference(np.array([1.0, 2.0, 3.0, -4.0, 5.0]), reference)
    assert cell["pairs"] == 5 and cell["mean"] == pytest.approx(7 / 5)
    assert cell["p"] == pytest.approx(14 / 32)
    # Ten positive, distinct differences: only the all-positive pattern (and its mirror) is as extreme.
    assert paired_difference(np.arange(1, 11) / 10, np.zeros(10))["p"] == pytest.approx(2 / 2**10)


def test_bootstrap_interval_agrees_with_an_independent_resampling():
    rng = np.random.default_rng(7)
    values, reference = rng.normal(0.3, 0.2, 200), rng.normal(0.25, 0.2, 200)
    cell = paired_difference(values, reference)
    differences = values - reference
    draws = rng.choice(differences, size=(20_000, len(differences))).mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    assert cell["ci_low"] == pytest.approx(low, abs=0.004) and cell["ci_high"] == pytest.approx(high, abs=0.004)
    assert cell["ci_low"] < differences.mean() < cell["ci_high"]


def test_constant_and_absent_differences():
    same = paired_difference(np.full(4, 0.3), np.full(4, 0.1))
    assert same["ci_low"] == same["ci_high"] == pytest.approx(0.2)
    tie = paired_difference(np.full(4, 0.3), np.full(4, 0.3))
    assert tie["mean"] == 0 and tie["p"] == 1.0
    assert format_difference(paired_difference(np.array([]), np.array([]))) == "—"
    assert format_difference(same).startswith("+0.2000 [+0.2000, +0.2000]* p ")


def test_compare_keeps_per_user_values_that_average_to_the_reported_metrics(tiny, tmp_path):
    output_dir = tmp_path / "out"
    config_dict = {**tiny["config_dict"], "list_eval": "sampled", "head_share": 0.5, "epochs": 1}
    compare(
        ["BPR", "Pop"], "tiny", [1, 2], str(output_dir), config_file_list=tiny["config_file_list"],
        config_dict=config_dict, reference="BPR", log=lambda *a, **k: None,
    )
    with gzip.open(output_dir / "per_user.csv.gz", "rt") as file:
        rows = list(csv.DictReader(file))
    with open(output_dir / "runs.csv") as file:
        runs = {(run["entry"], run["seed"]): run for run in csv.DictReader(file)}
    for metric in ("ndcg@10", "recall@20", "sampled:ndcg@5", "sampled:gndcg@10", "tail:ndcg@10"):
        for (entry, seed), run in runs.items():
            values = [float(row["value"]) for row in rows if (row["entry"], row["seed"], row["metric"]) == (entry, seed, metric)]
            assert values and np.mean(values) == pytest.approx(float(run[metric]), abs=1e-4), (entry, seed, metric)
    with open(output_dir / "paired.csv") as file:
        paired = {(row["model"], row["metric"]): row for row in csv.DictReader(file)}
    cell = paired[("Pop", "ndcg@10")]
    assert cell["reference"] == "BPR"
    by_entry = {
        entry: {(row["seed"], row["user"]): float(row["value"]) for row in rows if (row["entry"], row["metric"]) == (entry, "ndcg@10")}
        for entry in ("BPR", "Pop")
    }
    assert by_entry["BPR"].keys() == by_entry["Pop"].keys()  # the same test users on each seed's split
    difference = np.mean([by_entry["Pop"][key] - by_entry["BPR"][key] for key in by_entry["BPR"]])
    assert int(cell["pairs"]) == len(by_entry["BPR"])
    assert float(cell["mean difference"]) == pytest.approx(difference, abs=1e-9)
    assert float(cell["ci low"]) <= float(cell["mean difference"]) <= float(cell["ci high"])
    assert "Paired difference to `BPR`" in (output_dir / "summary.md").read_text()
    assert (output_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_reference_that_is_no_entry_is_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="--reference 'EASE' is none of the --compare entries"):
        compare(["BPR"], "tiny", [1], str(tmp_path / "out"), reference="EASE")
    assert not (tmp_path / "out").exists()
