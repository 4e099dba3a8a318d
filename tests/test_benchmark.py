"""The speed benchmark on tiny data: one row per model, ratios to BPR, atomic tables. No timing
is asserted (the machine's load decides it)."""

import csv
import os

import pytest

from recbole_endo.config import options_from_args
from recbole_endo.experiments import benchmark as benchmark_module
from recbole_endo.experiments.benchmark import add_ratios, benchmark, main

from conftest import DATA_DIR, TINY_YAML

MODELS = ["BPR", "TwoTowerConcat", "TwoTowerSplit", "EndoDecouple"]


def read_rows(output_dir):
    with open(os.path.join(output_dir, "speed.csv"), newline="") as file:
        return list(csv.DictReader(file))


def test_one_fresh_process_per_model_gives_a_row_each_with_ratios_to_bpr(tmp_path):
    output_dir = tmp_path / "speed"
    rows = benchmark(
        ["tiny"], str(output_dir), models=MODELS, epochs_measured=1, threads=1,
        config_file_list=[TINY_YAML], config_dict={"data_path": DATA_DIR, "checkpoint_dir": str(tmp_path / "saved")},
        profile_top=3, profile_batches=100,
    )
    assert [row["model"] for row in rows] == MODELS
    assert all(row["status"] == "ok" for row in rows), [row.get("error") for row in rows]
    table = read_rows(output_dir)
    assert [row["model"] for row in table] == MODELS
    bpr = table[0]
    assert float(bpr["train_ratio"]) == 1.0 and float(bpr["eval_ratio"]) == 1.0 and float(bpr["memory_ratio"]) == 1.0
    for row in table:
        assert row["dataset"] == "tiny" and row["threads"] == "1" and row["device"] == "cpu"
        assert int(row["train_interactions"]) > 0 and int(row["batches_per_epoch"]) > 0
        for column in ("train_s_per_epoch", "eval_s", "train_cpu_s_per_epoch", "eval_cpu_s", "peak_rss_mb",
                       "train_ratio", "eval_ratio", "memory_ratio"):
            assert float(row[column]) > 0
    markdown = (output_dir / "speed.md").read_text()
    for model in MODELS:
        assert f"| tiny | `{model}` |" in markdown
    assert "| tiny | `BPR` |" in markdown and "| 1.00 |" in markdown
    for row in rows:  # the profiled batches' three costliest operators, costliest first
        assert row["profile"]["batches"] == int(row["batches_per_epoch"])  # tiny: fewer than profile_batches
        costs = row["profile"]["costs"]
        assert len(costs) == 3 and all(cost["op"] and cost["calls"] >= 1 for cost in costs)
        assert costs[0]["self_cpu_ms"] >= costs[1]["self_cpu_ms"] >= costs[2]["self_cpu_ms"] > 0
        assert 0 < sum(cost["share"] for cost in costs) <= 1
        assert f"- tiny `{row['model']}`, {row['batches_per_epoch']} batches: `{costs[0]['op']}` {costs[0]['share']:.0%}" in markdown
    # Rows were written through temporary files renamed into place: none is left behind.
    assert sorted(os.listdir(output_dir)) == ["logs", "speed.csv", "speed.md"]
    assert sorted(os.listdir(output_dir / "logs")) == sorted(f"tiny-{model}.log" for model in MODELS)


def test_endo_synth_is_generated_before_the_timed_processes_with_its_own_options(tmp_path, monkeypatch):
    output_dir = tmp_path / "speed"
    options = {
        "data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "synth_users": 60,
        "synth_items": 40, "synth_interactions": 600, "synth_test_items": 4, "synth_user_groups": 3,
        "synth_item_categories": 4, "train_batch_size": 128, "embedding_size": 8, "mlp_hidden_size": [16, 8],
    }
    monkeypatch.chdir(tmp_path)
    code = main([
        "--datasets=endo-synth", "--models=BPR,TwoTowerSplit", "--epochs_measured=1", "--threads=1",
        f"--output_dir={output_dir}", *(f"--{key}={value}" for key, value in options.items()),
    ])
    assert code == 0
    table = read_rows(output_dir)
    assert [row["model"] for row in table] == ["BPR", "TwoTowerSplit"]
    assert float(table[0]["train_ratio"]) == 1.0
    assert int(table[0]["users"]) == 60 and int(table[0]["items"]) == 40
    assert [row["dataset"] for row in table] == ["endo-synth 600"] * 2
    assert os.path.isfile(tmp_path / "data" / "600" / "endo-synth" / "endo-synth.train.inter")


def test_an_entry_runs_the_model_with_its_options_under_its_own_name(tmp_path):
    output_dir = tmp_path / "speed"
    rows = benchmark(
        ["tiny"], str(output_dir), models=["BPR", "BPR[train_batch_size=32]"], epochs_measured=1, threads=1,
        config_file_list=[TINY_YAML], config_dict={"data_path": DATA_DIR, "checkpoint_dir": str(tmp_path / "saved")},
    )
    assert [row["model"] for row in rows] == ["BPR", "BPR[train_batch_size=32]"]
    interactions = rows[0]["train_interactions"]
    assert rows[0]["batches_per_epoch"] == -(-interactions // 128)  # tiny.yaml's batch
    assert rows[1]["batches_per_epoch"] == -(-interactions // 32)
    assert sorted(os.listdir(output_dir / "logs")) == ["tiny-BPR-train_batch_size=32-.log", "tiny-BPR.log"]


def test_a_failing_model_is_a_failed_row_and_the_others_still_run(tmp_path):
    output_dir = tmp_path / "speed"
    rows = benchmark(
        ["tiny"], str(output_dir), models=["BPR", "NoSuchModel"], epochs_measured=1, threads=1,
        config_file_list=[TINY_YAML], config_dict={"data_path": DATA_DIR, "checkpoint_dir": str(tmp_path / "saved")},
    )
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert "NoSuchModel" in rows[1]["error"]
    assert "failed:" in (output_dir / "speed.md").read_text()


def test_ratios_divide_by_the_baseline_on_the_same_dataset_and_are_blank_without_one():
    rows = [
        {"dataset": "a", "model": "BPR", "status": "ok", "train_s_per_epoch": 2.0, "eval_s": 1.0, "peak_rss_mb": 100.0},
        {"dataset": "a", "model": "X", "status": "ok", "train_s_per_epoch": 5.0, "eval_s": 1.5, "peak_rss_mb": 150.0},
        {"dataset": "b", "model": "X", "status": "ok", "train_s_per_epoch": 5.0, "eval_s": 1.5, "peak_rss_mb": 150.0},
    ]
    add_ratios(rows, "BPR")
    assert (rows[1]["train_ratio"], rows[1]["eval_ratio"], rows[1]["memory_ratio"]) == (2.5, 1.5, 1.5)
    assert rows[2]["train_ratio"] is None


def test_config_arguments_are_yaml_values_and_malformed_ones_are_refused():
    assert options_from_args(["--synth_interactions=1000000", "--mlp_hidden_size=[64, 32]"]) == {
        "synth_interactions": 1000000, "mlp_hidden_size": [64, 32]
    }
    with pytest.raises(ValueError, match="'learning_rate' is not --key=value"):
        options_from_args(["learning_rate"])


def test_synth_options_go_to_endo_synth_only():
    options = {"synth_interactions": 1000, "learning_rate": 0.01}
    cases = benchmark_module.dataset_cases(["ml-100k", "endo-synth"], options)
    assert cases == [
        ("ml-100k", "ml-100k", {"learning_rate": 0.01}),
        ("endo-synth", "endo-synth", {"data_path": "dataset/benchmark", **options}),
    ]
    assert benchmark_module.dataset_cases(["endo-synth"], {"data_path": "elsewhere"})[0][2] == {"data_path": "elsewhere"}


def test_each_synth_size_is_a_dataset_of_its_own_at_the_default_interactions_per_user():
    cases = benchmark_module.dataset_cases(["ml-100k", "endo-synth"], {"learning_rate": 0.01}, [1111111, 11111111])
    assert [label for label, _, _ in cases] == ["ml-100k", "endo-synth 1,111,111", "endo-synth 11,111,111"]
    assert all(dataset == "endo-synth" for _, dataset, _ in cases[1:])
    # endo-synth's defaults: 100,000 interactions over 2,000 users, 50 each
    assert [options["synth_users"] for _, _, options in cases[1:]] == [22223, 222223]
    assert [options["data_path"] for _, _, options in cases[1:]] == [
        os.path.join("dataset/benchmark", "1111111"), os.path.join("dataset/benchmark", "11111111"),
    ]
    given = benchmark_module.dataset_cases(["endo-synth"], {"synth_users": 500}, [20000])
    assert given[0][2]["synth_users"] == 500 and given[0][2]["synth_interactions"] == 20000
