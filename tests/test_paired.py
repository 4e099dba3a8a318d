"""Paired differences against hand computations; per-user values that average to the reported
metrics; the comparison runner's paired table."""

import csv
import gzip

import numpy as np
import pytest
import scipy.stats

from recbole_endo.experiments.compare import compare
from recbole_endo.experiments.paired import format_difference, paired_difference, paired_values, read_paired


def test_paired_values_match_users_by_seed_and_id():
    entry = {(1, "u2"): 0.5, (1, "u1"): 0.2, (2, "u1"): 0.4, (1, "u3"): 0.9}
    reference = {(1, "u1"): 0.1, (1, "u2"): 0.3, (2, "u1"): 0.1}  # no u3: it is not a pair
    values, base, seeds, users = paired_values(entry, reference)
    assert values.tolist() == [0.2, 0.5, 0.4] and base.tolist() == [0.1, 0.3, 0.1]
    assert seeds == [1, 1, 2] and users == ["u1", "u2", "u1"]


def test_seed_interval_is_a_student_t_interval_of_the_seeds_mean_differences():
    # Seed 1: differences 0.1 and 0.3 (mean 0.2); seed 2: 0.4; seed 3: 0.6. Seed means 0.2, 0.4, 0.6:
    # mean 0.4, standard deviation 0.2, so the interval is 0.4 ± t(0.975, 2) · 0.2 / sqrt(3),
    # with t(0.975, 2) = 4.302653 (a t table's value).
    cell = paired_difference(np.array([0.1, 0.3, 0.4, 0.6]), np.zeros(4), seeds=[1, 1, 2, 3])
    assert cell["seed_means"] == pytest.approx([0.2, 0.4, 0.6])
    half_width = 4.302653 * 0.2 / 3**0.5
    assert cell["seed_ci_low"] == pytest.approx(0.4 - half_width, abs=1e-6)
    assert cell["seed_ci_high"] == pytest.approx(0.4 + half_width, abs=1e-6)
    # Without users each pair is its own user: that interval excludes 0, the seed interval does not.
    assert format_difference(cell, p_value=False) == (
        f"+0.3500 [{cell['ci_low']:+.4f}, {cell['ci_high']:+.4f}]*; seeds [{0.4 - half_width:+.4f}, {0.4 + half_width:+.4f}]"
    )
    one_seed = paired_difference(np.array([0.1, 0.3]), np.zeros(2), seeds=[1, 1])
    assert one_seed["seed_means"] == pytest.approx([0.2]) and one_seed["seed_ci_low"] is None
    steady = paired_difference(np.array([0.1, 0.3, 0.2]), np.zeros(3), seeds=[1, 1, 2])
    assert steady["seed_ci_low"] == steady["seed_ci_high"] == pytest.approx(0.2)
    # Every seed the same: the interval has zero width, says so and is not marked, though it excludes 0.
    assert format_difference(steady).endswith("; seeds [+0.2000, +0.2000] zero width")


def test_users_count_once_through_their_mean_over_the_seeds_that_have_them():
    # Seed 1: u1 +0.1, u2 −0.3; seed 2: u1 +0.3, u2 +0.1, u3 +0.6 (u3 is on seed 2's split only).
    # Per-user means: u1 +0.2, u2 −0.1, u3 +0.6; their mean 0.7/3 (the 5 pairs' mean would be 0.16).
    # Wilcoxon over the 3 means: |d| ranks 1 (u2, negative), 2, 3; negative rank sum 1, and of the
    # 2^3 sign patterns 2 have one ≤ 1 ({}, {1}): p = 2 · 2/8 = 0.5, statistic min(1, 5) = 1.
    # Bootstrap: a resample is all u2 (mean −0.1) or all u3 (+0.6) with chance 1/27 > 2.5 % each,
    # so the 2.5th and 97.5th percentiles of the resampled means are −0.1 and +0.6.
    differences = {(1, "u1"): 0.1, (1, "u2"): -0.3, (2, "u1"): 0.3, (2, "u2"): 0.1, (2, "u3"): 0.6}
    values, base, seeds, users = paired_values(differences, dict.fromkeys(differences, 0.0))
    cell = paired_difference(values, base, seeds, users)
    assert cell["pairs"] == 5 and cell["mean"] == pytest.approx(0.7 / 3)
    assert cell["p"] == pytest.approx(0.5)
    assert scipy.stats.wilcoxon([0.2, -0.1, 0.6]).statistic == 1
    assert cell["ci_low"] == pytest.approx(-0.1) and cell["ci_high"] == pytest.approx(0.6)
    assert cell["seed_means"] == pytest.approx([-0.1, 1.0 / 3])


def test_the_same_users_tiled_over_seeds_leave_the_interval_and_p_unchanged():
    # A fixed split and two deterministic models: every seed repeats the same per-user differences.
    rng = np.random.default_rng(3)
    differences = rng.normal(0.01, 0.1, 60)
    once = paired_difference(differences, np.zeros(60), [2020] * 60, [f"u{index}" for index in range(60)])
    for copies in (2, 5):
        seeds = [2020 + copy for copy in range(copies) for _ in range(60)]
        users = [f"u{index}" for _ in range(copies) for index in range(60)]
        tiled = paired_difference(np.tile(differences, copies), np.zeros(60 * copies), seeds, users)
        # Equal up to the rounding of averaging identical copies (no ties among the differences).
        for key in ("mean", "ci_low", "ci_high", "p"):
            assert tiled[key] == pytest.approx(once[key], rel=1e-12, abs=1e-15), (copies, key)
        assert tiled["seed_ci_low"] == tiled["seed_ci_high"] == pytest.approx(differences.mean())
    # Pooling the pairs instead would narrow the interval: the per-user mean is what keeps it.
    pooled = paired_difference(np.tile(differences, 5), np.zeros(300))
    assert pooled["ci_high"] - pooled["ci_low"] < 0.6 * (once["ci_high"] - once["ci_low"])


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
    users = {user for _, user in by_entry["BPR"]}
    user_means = [
        np.mean([by_entry["Pop"][key] - by_entry["BPR"][key] for key in by_entry["BPR"] if key[1] == user]) for user in users
    ]
    assert int(cell["pairs"]) == len(by_entry["BPR"])
    assert float(cell["mean difference"]) == pytest.approx(np.mean(user_means), abs=1e-9)
    assert float(cell["ci low"]) <= float(cell["mean difference"]) <= float(cell["ci high"])
    per_seed = [
        np.mean([by_entry["Pop"][key] - by_entry["BPR"][key] for key in by_entry["BPR"] if key[0] == seed]) for seed in ("1", "2")
    ]
    assert [float(mean) for mean in cell["seed differences"].split()] == pytest.approx(per_seed, abs=1e-9)
    summary = (output_dir / "summary.md").read_text()
    assert "Paired difference to `BPR`" in summary
    _, cells = read_paired(str(output_dir))
    assert cells[("Pop", "ndcg@10")]["seed_means"] == pytest.approx(per_seed, abs=1e-9)
    assert (output_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_reference_that_is_no_entry_is_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="--reference 'EASE' is none of the --compare entries"):
        compare(["BPR"], "tiny", [1], str(tmp_path / "out"), reference="EASE")
    assert not (tmp_path / "out").exists()
