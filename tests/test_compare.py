import csv
import gzip
import os

import pytest

from recbole_endo.experiments import compare as compare_module
from recbole_endo.experiments.compare import (
    compare, markdown_table, panel_labels, parse_entry, plot_labels, split_entries, summarise, summary_figure,
)


def test_entries_split_on_commas_outside_brackets():
    text = "BPR, EndoDecouple[stage1_weight=0;mlp_hidden_size=[64, 32]],TwoTowerSplit"
    assert split_entries(text) == ["BPR", "EndoDecouple[stage1_weight=0;mlp_hidden_size=[64, 32]]", "TwoTowerSplit"]


def test_entry_options_are_yaml_values():
    assert parse_entry("EndoDecouple[stage1_weight=0;orthogonalize=False;mlp_hidden_size=[64, 32]]") == (
        "EndoDecouple",
        {"stage1_weight": 0, "orthogonalize": False, "mlp_hidden_size": [64, 32]},
    )
    assert parse_entry("BPR") == ("BPR", {})


@pytest.mark.parametrize("entry", ["BPR[learning_rate]", "9Model", "BPR[lr=1"])
def test_malformed_entry_is_refused_naming_it(entry):
    with pytest.raises(ValueError, match="--compare entry"):
        parse_entry(entry)


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [
        {"entry": "A", "ndcg@10": value, "best_epoch": 3, "epochs": 5, "train_s_per_epoch": 1.0,
         "valid_s_per_eval": 0.5, "test_eval_s": 0.2}
        for value in (0.1, 0.2, 0.3)
    ]
    summary = summarise(runs, ["ndcg@10"])
    mean, std = summary["A"]["ndcg@10"]
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)
    assert "| A | 3 | 0.2000 ± 0.1000 |" in markdown_table(summary, ["ndcg@10"])


@pytest.mark.parametrize("jobs", [1, 2])
def test_compare_runs_every_entry_with_every_seed(tiny, tmp_path, jobs):
    summary = compare(
        ["TwoTowerSplit", "BPR[learning_rate=0.01]"], "tiny", [1, 2], str(tmp_path / "out"),
        config_file_list=tiny["config_file_list"], config_dict=tiny["config_dict"], jobs=jobs,
        log=lambda *a, **k: None,
    )
    assert list(summary) == ["TwoTowerSplit", "BPR[learning_rate=0.01]"]
    with open(tmp_path / "out" / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [(run["entry"], run["seed"]) for run in runs] == [
        ("TwoTowerSplit", "1"), ("TwoTowerSplit", "2"), ("BPR[learning_rate=0.01]", "1"), ("BPR[learning_rate=0.01]", "2")
    ]
    assert all(0 <= int(run["best_epoch"]) < int(run["epochs"]) <= 2 for run in runs)
    table = (tmp_path / "out" / "summary.md").read_text()
    assert sum(line.startswith("|") for line in table.splitlines()) == 4  # header, rule, two entries
    assert "- TwoTowerSplit: defaults (no tuned file)" in table and f"{jobs} run(s) at a time" in table
    # every run tested its own checkpoint, even runs started in the same second
    assert len(os.listdir(tiny["config_dict"]["checkpoint_dir"])) == len(runs)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_is_named_and_the_others_are_kept(tiny, tmp_path, jobs):
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed .*BPR\[epochs=0\] seed 1: ValueError: config option 'epochs'"):
        compare(
            ["BPR[epochs=0]", "Random"], "tiny", [1], str(tmp_path / "out"),
            config_file_list=tiny["config_file_list"], config_dict=tiny["config_dict"], jobs=jobs,
            log=lambda *a, **k: None,
        )
    with open(tmp_path / "out" / "runs.csv") as f:
        assert [run["entry"] for run in csv.DictReader(f)] == ["Random"]


def test_tables_of_a_compare_that_fails_while_writing_keep_the_previous_ones(tmp_path, monkeypatch):
    def run_entry(entry, model, options, seed, *_):  # no training: only the writing is under test
        return {"entry": entry, "model": model, "seed": seed, "ndcg@10": 0.1 * seed, "best_epoch": 1, "epochs": 2,
                "train_s_per_epoch": 1.0, "valid_s_per_eval": 0.1, "test_eval_s": 0.1, "wall_s": 1.0, "per_user": {},
                "tuned_file": None}

    monkeypatch.setattr(compare_module, "run_entry", run_entry)
    output_dir = tmp_path / "out"
    compare(["BPR"], "tiny", [1, 2], str(output_dir), log=lambda *a, **k: None)
    before = {name: (output_dir / name).read_bytes() for name in os.listdir(output_dir)}

    def disk_full(writer, rows):
        writer.writerow(rows[0])
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError, match="disk full"):
        compare(["BPR"], "tiny", [3, 4], str(output_dir), log=lambda *a, **k: None)
    assert {name: (output_dir / name).read_bytes() for name in os.listdir(output_dir)} == before


def test_entries_reporting_different_metrics_share_one_table(tmp_path, monkeypatch):
    def run_entry(entry, model, options, seed, *_):  # BPR[head_share=0.5] adds the strata's metrics
        run = {"entry": entry, "model": model, "seed": seed, "ndcg@10": 0.1 * seed, "best_epoch": 1, "epochs": 2,
               "train_s_per_epoch": 1.0, "valid_s_per_eval": 0.1, "test_eval_s": 0.1, "wall_s": 1.0, "per_user": {},
                "tuned_file": None}
        if options:
            run["tail:ndcg@10"] = 0.01 * seed
        return run

    monkeypatch.setattr(compare_module, "run_entry", run_entry)
    output_dir = tmp_path / "out"
    summary = compare(["BPR", "BPR[head_share=0.5]"], "tiny", [1, 2], str(output_dir), log=lambda *a, **k: None)
    assert summary["BPR"]["tail:ndcg@10"] is None
    assert summary["BPR[head_share=0.5]"]["tail:ndcg@10"][0] == pytest.approx(0.015)
    table = (output_dir / "summary.md").read_text()
    assert "| BPR | 2 | 0.1500 ± 0.0707 | — |" in table
    assert "| BPR[head_share=0.5] | 2 | 0.1500 ± 0.0707 | 0.0150 ± 0.0071 |" in table
    with open(output_dir / "runs.csv") as f:
        assert [run["tail:ndcg@10"] for run in csv.DictReader(f)] == ["", "", "0.01", "0.02"]


def test_compare_runs_show_no_progress_bars(monkeypatch):
    seen = []

    def run_recbole_endo(**arguments):
        seen.append(arguments["config_dict"])
        return {"valid_metric": "ndcg@10", "best_valid_score": 0.1, "test_result": {"ndcg@10": 0.1},
                "per_user": {}, "tuned_file": None, **dict.fromkeys(compare_module.RUN_COLUMNS, 1)}

    monkeypatch.setattr(compare_module, "run_recbole_endo", run_recbole_endo)
    compare_module.run_entry("BPR", "BPR", {}, 1, "tiny", None, {"state": "INFO"})
    assert seen == [{"show_progress": False, "state": "INFO", "seed": 1}]


def test_summary_opens_with_the_command_commit_and_each_entrys_tuned_file(tmp_path, monkeypatch):
    tuned = tmp_path / "BPR.yaml"
    tuned.write_text("# Written by python -m recbole_endo.experiments.tune at commit abc: best of 24 trials.\nlearning_rate: 0.01\n")

    def run_entry(entry, model, options, seed, *_):
        return {"entry": entry, "model": model, "seed": seed, "ndcg@10": 0.1, "best_epoch": 1, "epochs": 2,
                "train_s_per_epoch": 1.0, "valid_s_per_eval": 0.1, "test_eval_s": 0.1, "wall_s": 1.0, "per_user": {},
                "tuned_file": str(tuned) if model == "BPR" else None}

    monkeypatch.setattr(compare_module, "run_entry", run_entry)
    monkeypatch.setattr(compare_module, "git_commit", lambda: "1234567")
    compare(["BPR", "Pop"], "tiny", [1], str(tmp_path / "out"), log=lambda *a, **k: None, command="python x.py --compare=BPR,Pop")
    lines = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert lines[0] == "Command: `python x.py --compare=BPR,Pop`"
    assert lines[1].startswith("Commit: 1234567; machine: ")
    assert lines[3].endswith("BPR.yaml: Written by python -m recbole_endo.experiments.tune at commit abc: best of 24 trials.")
    assert lines[4] == "- Pop: defaults (no tuned file)"
    with open(tmp_path / "out" / "runs.csv") as f:
        assert "tuned_file" not in next(csv.reader(f))


def test_summary_says_when_the_test_lacks_a_uniform_slice(tmp_path, monkeypatch):
    def run_entry(entry, model, options, seed, *_):
        return {"entry": entry, "model": model, "seed": seed, "ndcg@10": 0.1, "best_epoch": 1, "epochs": 2,
                "train_s_per_epoch": 1.0, "valid_s_per_eval": 0.1, "test_eval_s": 0.1, "wall_s": 1.0, "per_user": {},
                "tuned_file": None, "uniform_slice": ("data/coat/coat.uniform.inter", 232)}

    monkeypatch.setattr(compare_module, "run_entry", run_entry)
    compare(["MF", "MFIPS"], "coat", [1, 2], str(tmp_path / "out"), log=lambda *a, **k: None)
    lines = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert lines[2] == (
        "Test: without the uniform slice data/coat/coat.uniform.inter (232 random ratings the converter's "
        "--uniform_slice moved out of the test; propensity naive_bayes estimates P(r) on them), for every entry: "
        "not comparable with a table on the whole test."
    )
    assert lines[3].startswith("Configuration of each entry")
    with open(tmp_path / "out" / "runs.csv") as f:
        assert "uniform_slice" not in next(csv.reader(f))


def test_plot_labels_leave_out_the_options_a_models_entries_share_and_shorten_the_rest():
    entries = ["TwoTowerSplit", "Endo[lr=0.1;dropout=0.2;stage1=0]", "Endo[lr=0.1;dropout=0.2;stage1=0.25;margin=0.5]",
               "BPR[learning_rate=0.0017525134087825378;weight_decay=1.0e-06;embedding_size=32]", "Pop", "Pop[x=1]"]
    assert plot_labels(entries) == [
        "TwoTowerSplit", "Endo[stage1=0]", "Endo[stage1=0.25;margin=0.5]",
        "BPR[learning_rat" + "…" + "ecay=1.0e-06;embedding_size=32]",  # 16 + 1 + 31 characters
        "Pop", "Pop[x=1]",
    ]


def test_the_validation_score_is_labelled_validation_and_has_no_paired_panel():
    """A comparison's columns hold each run's best validation score as ``valid <metric>`` beside the
    test metrics; it has no per-user values, so no paired difference."""
    metrics = ["valid ndcg@10", "ndcg@10", "exposed:ndcg@10"]
    table = {"B": {"ndcg@10": {}, "exposed:ndcg@10": {}, "recall@10": {}}}
    assert panel_labels(metrics, table, "A") == [
        ("validation ndcg@10 at the best epoch: mean ± std over seeds", None),
        ("test ndcg@10: mean ± std over seeds", "paired Δ ndcg@10 to A, 95 % interval"),
        ("test exposed:ndcg@10: mean ± std over seeds", "paired Δ exposed:ndcg@10 to A, 95 % interval"),
    ]
    assert panel_labels(metrics) == [
        ("validation ndcg@10 at the best epoch: mean ± std over seeds", None),
        ("test ndcg@10: mean ± std over seeds", None),
        ("test exposed:ndcg@10: mean ± std over seeds", None),
    ]
    # the figure uses them: the validation row's paired panel is switched off
    cell = {"mean": 0.01, "ci_low": 0.0, "ci_high": 0.02}
    summary = {entry: {"valid ndcg@10": (0.3, 0.01), "ndcg@10": (0.2, 0.01)} for entry in ("A", "B")}
    axes = summary_figure(summary, ["valid ndcg@10", "ndcg@10"], {"B": {"ndcg@10": cell}}, "A").axes
    assert [(axis.get_xlabel(), axis.axison) for axis in axes] == [
        ("validation ndcg@10 at the best epoch: mean ± std over seeds", True), ("", False),
        ("test ndcg@10: mean ± std over seeds", True), ("paired Δ ndcg@10 to A, 95 % interval", True),
    ]


def fake_runs(monkeypatch):
    """Runs without training: entry B beats A by 0.01 per user on seed 1, 0.03 on seed 2, 0.02 on seed 3."""
    def run_entry(entry, model, options, seed, *_):
        users = ["u1", "u2", "u3", "u4"]
        values = [0.1 * (index + 1) + (0.01 * {1: 1, 2: 3, 3: 2}[seed] if entry == "B" else 0.0) for index in range(4)]
        values[seed % 4] += 0.005  # users differ, so the bootstrap interval has a width
        return {"entry": entry, "model": "BPR", "seed": seed, "ndcg@10": sum(values) / 4, "best_epoch": seed,
                "epochs": 9, "train_s_per_epoch": 0.5, "valid_s_per_eval": 0.1, "test_eval_s": 2.5e-05, "wall_s": 1.0,
                "per_user": {"ndcg@10": (users, values)}, "tuned_file": None}

    monkeypatch.setattr(compare_module, "run_entry", run_entry)


def test_retabulating_rewrites_a_folder_as_it_was_and_merging_equals_one_compare_over_all_seeds(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    quiet = {"log": lambda *a, **k: None, "reference": "A"}
    compare(["A", "B"], "tiny", [1, 2, 3], str(tmp_path / "all"), **quiet)
    compare(["A", "B"], "tiny", [1], str(tmp_path / "one"), **quiet)
    compare(["A", "B"], "tiny", [2, 3], str(tmp_path / "two"), **quiet)
    files = ("runs.csv", "summary.csv", "paired.csv", "summary.md")
    before = {name: (tmp_path / "all" / name).read_text() for name in files}
    compare_module.main([str(tmp_path / "all")])
    assert {name: (tmp_path / "all" / name).read_text() for name in files} == before
    compare_module.main([str(tmp_path / "one"), str(tmp_path / "two"), "--output_dir", str(tmp_path / "merged")])
    for name in ("runs.csv", "summary.csv", "paired.csv"):
        assert (tmp_path / "merged" / name).read_text() == before[name], name
    with open(tmp_path / "merged" / "paired.csv") as file:
        (cell,) = csv.DictReader(file)
    # Seed means 0.01, 0.03, 0.02: mean 0.02, std 0.01, t(0.975, 2) = 4.302653.
    assert [float(mean) for mean in cell["seed differences"].split()] == pytest.approx([0.01, 0.03, 0.02])
    assert float(cell["seed ci low"]) == pytest.approx(0.02 - 4.302653 * 0.01 / 3**0.5, abs=1e-6)
    merged = (tmp_path / "merged" / "summary.md").read_text()
    assert "left out: none." in merged and f"From `{tmp_path / 'two'}`:" in merged


def test_merging_keeps_the_entries_with_a_run_on_every_seed(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    quiet = {"log": lambda *a, **k: None, "reference": "A"}
    compare(["A", "B", "C"], "tiny", [1], str(tmp_path / "wide"), **quiet)
    compare(["B", "A"], "tiny", [2, 3], str(tmp_path / "narrow"), **quiet)
    compare(["A", "B"], "tiny", [1, 2, 3], str(tmp_path / "all"), **quiet)
    compare_module.retabulate([str(tmp_path / "wide"), str(tmp_path / "narrow")], str(tmp_path / "merged"))
    for name in ("runs.csv", "summary.csv", "paired.csv"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "all" / name).read_text(), name
    assert "entries without a run on every seed left out: C." in (tmp_path / "merged" / "summary.md").read_text()


def test_merging_joins_folders_that_ran_different_entries_on_the_same_seeds(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    quiet = {"log": lambda *a, **k: None, "reference": "A"}
    compare(["A", "B", "C"], "tiny", [1], str(tmp_path / "first"), **quiet)
    compare(["A", "B"], "tiny", [2], str(tmp_path / "ours"), **quiet)
    compare(["C"], "tiny", [2], str(tmp_path / "baselines"), log=quiet["log"])
    compare(["A", "B", "C"], "tiny", [1, 2], str(tmp_path / "all"), **quiet)
    folders = [str(tmp_path / name) for name in ("first", "ours", "baselines")]
    compare_module.retabulate(folders, str(tmp_path / "merged"))
    for name in ("runs.csv", "summary.csv", "paired.csv"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "all" / name).read_text(), name
    assert "left out: none." in (tmp_path / "merged" / "summary.md").read_text()


def test_merging_a_run_twice_or_no_complete_entry_is_refused(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    for name, entries, seeds in (("one", ["A", "B"], [1]), ("again", ["A", "B"], [1, 2]), ("other", ["C"], [3])):
        compare(entries, "tiny", seeds, str(tmp_path / name), log=lambda *a, **k: None)
    with pytest.raises(ValueError, match=r"A has seed 1 in both .*one and .*again"):
        compare_module.retabulate([str(tmp_path / "one"), str(tmp_path / "again")], str(tmp_path / "merged"))
    with pytest.raises(ValueError, match=r"no entry .* has a run on every seed \[1, 3\]"):
        compare_module.retabulate([str(tmp_path / "one"), str(tmp_path / "other")], str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_retabulating_a_folder_without_per_user_values_names_the_missing_file(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    compare(["A", "B"], "tiny", [1], str(tmp_path / "old"), log=lambda *a, **k: None)
    (tmp_path / "old" / "per_user.csv.gz").unlink()
    with pytest.raises(SystemExit):
        compare_module.main([str(tmp_path / "old")])
    with pytest.raises(ValueError, match=r"old lacks per_user\.csv\.gz: .*rerun its command"):
        compare_module.retabulate([str(tmp_path / "old")], str(tmp_path / "old"))


def test_retabulating_one_folder_keeps_an_entry_a_failed_run_left_short_of_a_seed(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    succeeding = compare_module.run_entry

    def run_entry(entry, model, options, seed, *rest):
        if (entry, seed) == ("B", 2):
            raise RuntimeError("diverged")
        return succeeding(entry, model, options, seed, *rest)

    monkeypatch.setattr(compare_module, "run_entry", run_entry)
    with pytest.raises(RuntimeError, match="1 of 4 runs failed"):
        compare(["A", "B"], "tiny", [1, 2], str(tmp_path / "short"), log=lambda *a, **k: None, reference="A")
    files = ("runs.csv", "summary.csv", "paired.csv", "summary.md")
    before = {name: (tmp_path / "short" / name).read_text() for name in files}
    compare_module.main([str(tmp_path / "short")])
    assert {name: (tmp_path / "short" / name).read_text() for name in files} == before
    assert "| B | 1 |" in before["summary.md"]


def test_a_rerun_folder_replaces_its_entries_runs_on_every_seed_of_the_other_folders(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    quiet = {"log": lambda *a, **k: None, "reference": "A"}
    compare(["A", "B", "C"], "tiny", [1], str(tmp_path / "old"), **quiet)
    compare(["A", "B", "C"], "tiny", [2], str(tmp_path / "old-more-seeds"), **quiet)
    compare(["A", "B"], "tiny", [1, 2], str(tmp_path / "rerun"), **quiet)
    compare(["A", "B"], "tiny", [1, 2], str(tmp_path / "rerun-only"), **quiet)
    old = [str(tmp_path / "old"), str(tmp_path / "old-more-seeds")]
    with pytest.raises(ValueError, match="A has seed 1 in both"):
        compare_module.retabulate([*old, str(tmp_path / "rerun")], str(tmp_path / "merged"))
    compare_module.main([*old, "--rerun", str(tmp_path / "rerun"), "--output_dir", str(tmp_path / "merged"), "--reference", "A"])
    with open(tmp_path / "merged" / "runs.csv") as file:
        runs = list(csv.DictReader(file))
    # C keeps both old folders' seeds; A and B come from the rerun only, one run per seed.
    assert sorted((run["entry"], run["seed"]) for run in runs) == [(e, s) for e in "ABC" for s in "12"]
    with open(tmp_path / "merged" / "summary.csv") as file:
        assert [row["model"] for row in csv.DictReader(file)] == ["A", "B", "C"]  # rerun entries keep their place
    merged = (tmp_path / "merged" / "summary.md").read_text()
    for entry in "AB":
        for folder in old:
            assert f"{entry}'s runs in `{folder}` replaced by those in `{tmp_path / 'rerun'}`." in merged
    assert "C's runs" not in merged
    with open(tmp_path / "merged" / "paired.csv") as file:
        rows = {(row["model"], row["metric"]): row for row in csv.DictReader(file)}
    with open(tmp_path / "rerun-only" / "paired.csv") as file:
        alone = {(row["model"], row["metric"]): row for row in csv.DictReader(file)}
    assert rows[("B", "ndcg@10")] == alone[("B", "ndcg@10")]


def test_merging_can_keep_only_some_entries_and_seeds_of_a_rerun_that_holds_more(tmp_path, monkeypatch):
    """A one-seed table of A and B, rerun from a folder holding A and C on seeds 1-2: A's seed-1
    run is replaced, C and seed 2 stay out."""
    fake_runs(monkeypatch)
    quiet = {"log": lambda *a, **k: None, "reference": "A"}
    compare(["A", "B"], "tiny", [1], str(tmp_path / "table"), **quiet)
    compare(["A", "C"], "tiny", [1, 2], str(tmp_path / "rerun"), **quiet)
    compare_module.main([
        str(tmp_path / "table"), "--rerun", str(tmp_path / "rerun"), "--output_dir", str(tmp_path / "merged"),
        "--entries", "A,B", "--seeds", "1",
    ])
    with open(tmp_path / "merged" / "runs.csv") as file:
        assert [(run["entry"], run["seed"]) for run in csv.DictReader(file)] == [("A", "1"), ("B", "1")]
    with gzip.open(tmp_path / "merged" / "per_user.csv.gz", "rt") as file:
        assert {(row["entry"], row["seed"]) for row in csv.DictReader(file)} == {("A", "1"), ("B", "1")}
    merged = (tmp_path / "merged" / "summary.md").read_text()
    assert f"A's runs in `{tmp_path / 'table'}` replaced by those in `{tmp_path / 'rerun'}`." in merged
    assert "Only entries A, B kept. Only seeds 1 kept." in merged
