import csv
import os
import runpy
import shlex
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import yaml
from conftest import DATA_DIR, TINY_YAML

import recbole_endo.quick_start
from recbole_endo import Config
from recbole_endo.compat.checkpoint import read_checkpoint
from recbole_endo.config import check_options
from recbole_endo.experiments import benchmark

SCRIPT = os.path.join(os.path.dirname(DATA_DIR), "..", "run_recbole_endo.py")


def run_script(*args, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT, *args, f"--data_path={DATA_DIR}", "--epochs=1"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_model_comes_from_the_properties_file(tmp_path):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model: TwoTowerConcat\n")
    run = run_script(f"--config_files={TINY_YAML} {model_yaml}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("TwoTowerConcat: 1 epoch,") and "\ntest: " in run.stdout


def test_model_option_overrides_the_properties_file(tmp_path):
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text("model: TwoTowerConcat\n")
    run = run_script("--model=BPR", f"--config_files={TINY_YAML} {model_yaml}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("BPR: 1 epoch,")


def test_a_run_shows_its_progress_keeps_the_dumps_for_its_log_and_ends_with_where_its_files_are(tmp_path):
    run = run_script("--model=TwoTowerSplit", f"--config_files={TINY_YAML}", "--state=INFO", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # RecBole's console handler writes to stderr: its epoch lines and the plugin's progress line
    assert "epoch 0 training [time" in run.stderr
    assert "epoch 0 done (" in run.stderr and "at most 0 s left" in run.stderr  # epochs=1: nothing left
    (log,) = (tmp_path / "log" / "TwoTowerSplit").iterdir()
    logged = log.read_text()
    for dump in ("General Hyper Parameters", "TwoTowerSplit(", "The number of users", "loss components"):
        assert dump in logged and dump not in run.stderr, dump
    (checkpoint,) = (tmp_path / "saved").iterdir()
    lines = run.stdout.splitlines()
    assert lines[0].startswith("TwoTowerSplit: 1 epoch, the best at epoch 0 (ndcg@10 ")
    assert lines[1].startswith("test: ") and " ndcg@10 " in lines[1]
    assert lines[2] == f"checkpoint: saved/{checkpoint.name}"
    assert lines[3] == f"log: log/TwoTowerSplit/{log.name}  (TensorBoard: log_tensorboard/{log.name.split('.')[0]})"
    assert lines[4:] == [
        "next:",
        f"  top-k recommendations: python -m recbole_endo.retrieval export saved/{checkpoint.name} index/",
        "  paired comparison over seeds: python run_recbole_endo.py --compare=TwoTowerSplit,BPR "
        "--seeds=2020,2021,2022 --reference=TwoTowerSplit",
    ]


def test_a_run_opens_with_which_file_set_which_option(tmp_path):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "TwoTowerSplit.yaml").write_text("learning_rate: 0.0123\nembedding_size: 4\n")
    run = run_script("--model=TwoTowerSplit", f"--config_files={TINY_YAML}", f"--tuned={tuned}", "--state=INFO", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    screen = [line.split("INFO  ", 1)[-1] for line in run.stderr.splitlines() if " INFO  " in line]
    # after RecBole's line of the command's arguments, before anything else
    opening = screen[1:5]
    assert opening[0].startswith("options from ") and opening[0].split(":")[0].endswith("overall.yaml")
    assert opening[1].startswith("options from ") and opening[1].split(":")[0].endswith("model/TwoTowerSplit.yaml")
    # embedding_size: tiny.yaml's, given to the run after the tuned file
    assert opening[2] == "options from tuned/TwoTowerSplit.yaml (tuned: false runs without it): learning_rate"
    assert opening[3].startswith("options given to the run, over every file: config files: ")
    assert "embedding_size" in opening[3] and opening[3].endswith("; command line: tuned, state, data_path, epochs")
    (log,) = (tmp_path / "log" / "TwoTowerSplit").iterdir()
    assert all(line in log.read_text() for line in opening)


def test_the_progress_line_counts_down_to_early_stopping_or_the_epoch_limit():
    lines = []
    trainer = SimpleNamespace(
        stopping_step=3, cur_step=1, eval_step=2, epochs=100, valid_metric="ndcg@10", best_valid_score=0.25,
        best_epoch=5, logger=SimpleNamespace(info=lines.append),
    )
    report = recbole_endo.quick_start._progress(trainer, train_seconds=[2.0, 4.0, 3.0], valid_seconds=[1.0, 2.0])
    # 12 s over 3 epochs: 4 s an epoch; 3 more validations without improvement (cur_step 1 of 3,
    # stopping at 4) every 2 epochs: the run ends by epoch 7 + 6 = 13, 6 epochs = 24 s from now.
    report(7, 0.2)
    trainer.epochs = 10  # the epoch limit comes first: epoch 9, 2 epochs, 8 s
    report(7, 0.2)
    assert lines == [
        "epoch 7 done (4.0 s an epoch); best ndcg@10 0.2500 at epoch 5; ends by epoch 13 unless validation "
        "improves: at most 24 s left",
        "epoch 7 done (4.0 s an epoch); best ndcg@10 0.2500 at epoch 5; ends by epoch 9 unless validation "
        "improves: at most 8 s left",
    ]


@pytest.mark.parametrize("running, threads", [(1, 2), (2, 1), (3, 1), (9, 1)])
def test_a_run_takes_the_cores_that_other_running_processes_leave_idle(monkeypatch, tmp_path, running, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"1.50 1.20 0.90 {running}/312 4242\n")  # this process is one of the running
    real_open = open
    monkeypatch.setattr(
        benchmark, "open",
        lambda path, *args, **kwargs: real_open(loadavg if path == "/proc/loadavg" else path, *args, **kwargs),
        raising=False,
    )
    assert benchmark.idle_cores() == threads


@pytest.mark.parametrize("load, threads", [(0.0, 2), (0.4, 2), (0.6, 1), (3.5, 1)])
def test_without_a_count_of_running_processes_the_load_average_decides(monkeypatch, load, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(benchmark, "open", no_proc, raising=False)
    assert benchmark.idle_cores() == threads


def test_unknown_model_fails_listing_the_models(tmp_path):
    run = run_script("--model=NoSuchModel", f"--config_files={TINY_YAML}", cwd=tmp_path)
    assert run.returncode != 0
    assert "NoSuchModel" in run.stderr and "TwoTowerSplit" in run.stderr


# Issue 37, item 2: errors before work, in one line.

TINY_RUN = ["--model=EndoDecouple", f"--config_files={TINY_YAML}", f"--data_path={DATA_DIR}"]
RUN_FOLDERS = ("log", "log_tensorboard", "saved")


def script(*args, cwd, patch=""):
    """The script run in a fresh process after the Python lines ``patch`` (monkeypatches)."""
    lines = ["import runpy, sys", textwrap.dedent(patch), "sys.argv = sys.argv[1:]"]
    code = "\n".join(lines + ["runpy.run_path(sys.argv[0], run_name='__main__')"])
    return subprocess.run(
        [sys.executable, "-c", code, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def run_files(folder):
    """The files under the folders a run writes to (RecBole's log/, log_tensorboard/ and saved/)."""
    paths = [path for name in RUN_FOLDERS for path in (folder / name).rglob("*")]
    return sorted(str(path.relative_to(folder)) for path in paths if path.is_file())


def other_runs_files(folder):
    """Files of other runs in the folders a run writes to, which a failed run must leave alone."""
    files = [
        folder / "log" / "EndoDecouple" / "other.log",
        folder / "log_tensorboard" / "other" / "events",
        folder / "saved" / "other.pth",
    ]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("another run's")
    return run_files(folder)


def run_in_process(monkeypatch, capsys, *args):
    """``(exit status, stderr)`` of the script run in this process with no data loading allowed."""

    def no_data(*_, **__):
        raise AssertionError("the data was loaded before the options were checked")

    monkeypatch.setattr(recbole_endo.quick_start, "prepare_dataset", no_data)
    monkeypatch.setattr(recbole_endo.quick_start, "create_dataset", no_data)
    monkeypatch.setattr(sys, "argv", [SCRIPT, *TINY_RUN, *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(SCRIPT, run_name="__main__")
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, refusal",
    [
        ("learning_rate", "abc", "a number in (0, inf], got 'abc' (str)"),
        ("stage1_weight", "-1", "a number in [0, inf], got -1 (int)"),  # EndoDecouple's own check, run early
        ("epochs", "0", "an integer in [1, inf], got 0 (int)"),
        ("train_batch_size", "0.5", "an integer in [1, inf], got 0.5 (float)"),
        ("seed", "-3", "an integer in [0, 4294967295], got -3 (int)"),  # was taken for --seeds, and ignored
    ],
)
def test_a_bad_option_is_refused_in_one_line_before_the_data_loads(
    option, value, refusal, tmp_path, monkeypatch, capsys
):
    status, err = run_in_process(monkeypatch, capsys, f"--{option}={value}")
    assert status == 2
    assert err.splitlines() == [f"error: config option '{option}' must be {refusal}"]
    assert run_files(tmp_path) == []


@pytest.mark.parametrize(
    "model, options, refusal",
    [
        ("DICE", {"margin_decay": "1.5"}, "'margin_decay' must be a number in [0, 1], got 1.5 (float)"),
        ("MACR", {"fusion_loss": "xyz"}, "'fusion_loss' must be bce or bpr, got 'xyz'"),
        ("TwoTowerSplit", {"dropout_prob": "1"}, "'dropout_prob' must be a number in [0, 1), got 1 (int)"),
        ("TwoTowerSplit", {"atom_dropout": "0.5", "id_path": "True"}, "'atom_dropout' (0.5) embeds some training"),
        ("TwoTowerConcat", {"within_user_weight": "1", "grade_thresholds": "[]"}, "'within_user_weight' is 1, but"),
        ("EndoDecouple", {"endo_eta": "-1"}, "'endo_eta' must be a number in [0, inf], got -1 (int)"),
        ("PDA", {"predict_method": "XYZ"}, "'predict_method' must be PD or PDA, got 'XYZ'"),
        ("MFIPS", {"propensity_clip": "2"}, "'propensity_clip' must be a number in [0, 1], got 2 (int)"),
        ("MFDR", {"propensity": "naive_bayes"}, "'propensity' naive_bayes (MFDR) estimates P(r) on the dataset's uniformly"),
        ("RelMF", {"click_threshold": "high"}, "'click_threshold' must be a number in [-inf, inf], got 'high' (str)"),
        ("ItemMeanRating", {"mean_rating_prior": "-1"}, "'mean_rating_prior' must be a number in [0, inf], got -1"),
        ("SplitSASRec", {"mlp_hidden_size": "[0]"}, "'mlp_hidden_size' must be a list of positive integers, got [0]"),
        ("SideProfile", {"profile_length": "-1"}, "'profile_length' must be an integer in [0, inf], got -1 (int)"),
    ],
)
def test_a_bad_model_option_is_refused_by_the_models_check_before_the_data_loads(
    model, options, refusal, tiny, tmp_path, monkeypatch, capsys
):
    """A plugin model's ``check_config`` runs in check_options, from the config alone: a bad
    option of its own fails before any data loads, not in its ``__init__`` after loading."""
    tiny["config_dict"].update({option: yaml.safe_load(value) for option, value in options.items()})
    with pytest.raises(ValueError) as refused:
        check_options(Config(model=model, **tiny))
    assert str(refused.value).startswith(f"config option {refusal}")
    args = [f"--{option}={value}" for option, value in options.items()]
    status, err = run_in_process(monkeypatch, capsys, f"--model={model}", *args)
    assert status == 2
    assert err.splitlines() == [f"error: {refused.value}"]
    assert run_files(tmp_path) == []


def test_the_script_refuses_a_bad_learning_rate_in_one_line_and_leaves_no_file(tmp_path):
    run = script(*TINY_RUN, "--learning_rate=abc", cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    refusal = "error: config option 'learning_rate' must be a number in (0, inf], got 'abc' (str)"
    assert run.stderr.splitlines() == [refusal]
    assert run_files(tmp_path) == []


@pytest.mark.parametrize("asked", ["--debug", "--state=DEBUG"])
def test_debug_shows_the_traceback(asked, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [SCRIPT, *TINY_RUN, "--learning_rate=abc", asked])
    with pytest.raises(ValueError, match="'learning_rate'"):
        runpy.run_path(SCRIPT, run_name="__main__")


@pytest.mark.parametrize(
    "text, where",
    [
        ("epochs: 1\nlearning_rate: 0.1: 2\n", "at line 2, column 19: mapping values are not allowed here"),
        (
            "epochs: [1, 2\n",  # the bracket never closes: the file ends, and the bracket's place is named too
            "at line 2, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 1, column 9)",
        ),
    ],
)
def test_a_yaml_error_names_the_file_and_the_line(text, where, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    status, err = run_in_process(monkeypatch, capsys, f"--config_files={TINY_YAML} {broken}")
    assert status == 2
    assert err.splitlines() == [f"error: config file '{broken}' is not valid YAML {where}; correct the file there"]


FAIL_AFTER_TRAINING = """
    import glob
    import recbole_endo.quick_start as quick_start

    def fail(*args, **kwargs):  # the test protocol, after training wrote the run's files
        print("written:", sorted(glob.glob("saved/*.pth") + glob.glob("log/*/*.log") + glob.glob("log_tensorboard/*")))
        raise ValueError("failed after training")

    quick_start.full_sort_per_user = fail
"""


def test_a_failed_run_leaves_no_log_tensorboard_folder_or_checkpoint(tmp_path):
    others = other_runs_files(tmp_path)
    run = script(*TINY_RUN, "--epochs=1", cwd=tmp_path, patch=FAIL_AFTER_TRAINING)
    assert run.returncode == 2 and run.stderr.splitlines() == ["error: failed after training"], run.stderr[-2000:]
    written = run.stdout.split("written: ", 1)[1]
    assert "saved/EndoDecouple-" in written and "log/EndoDecouple/EndoDecouple-tiny-" in written
    assert "log_tensorboard/EndoDecouple-tiny-" in written
    assert run_files(tmp_path) == others


def test_a_failed_resumed_run_keeps_the_checkpoint_it_resumed(tiny):
    checkpoint = recbole_endo.quick_start.run_recbole_endo(model="BPR", **tiny)["checkpoint"]
    with open(checkpoint, "rb") as file:
        before = file.read()
    tiny["config_dict"]["epochs"] = 1  # no epoch left to train: refused once the trainer is built
    with pytest.raises(ValueError, match="no epoch is left"):
        recbole_endo.quick_start.run_recbole_endo(model="BPR", resume_file=checkpoint, **tiny)
    with open(checkpoint, "rb") as file:
        assert file.read() == before


INTERRUPT_AT_EPOCH_1 = """
    from recbole_endo.trainer import FeatureTowerTrainer

    train_epoch = FeatureTowerTrainer._train_epoch

    def interrupted(self, train_data, epoch_idx, *args, **kwargs):  # Ctrl-C in the second epoch
        if epoch_idx == 1:
            raise KeyboardInterrupt
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    FeatureTowerTrainer._train_epoch = interrupted
"""


def test_ctrl_c_ends_with_the_command_that_resumes_from_the_last_checkpoint(tmp_path):
    run = script(*TINY_RUN, "--epochs=2", cwd=tmp_path, patch=INTERRUPT_AT_EPOCH_1)
    assert run.returncode == 130, run.stderr[-2000:]
    (line,) = run.stderr.splitlines()  # tiny.yaml logs warnings only: the line is all
    prefix = "interrupted; continue from the last checkpoint with: "
    assert line.startswith(prefix)
    command = shlex.split(line[len(prefix):])
    checkpoint = command[-1].removeprefix("--resume=")
    assert command[:-1] == ["python", SCRIPT, *TINY_RUN, "--epochs=2"]
    assert read_checkpoint(tmp_path / checkpoint)["epoch"] == 0  # the run's own, kept
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.startswith("EndoDecouple: 2 epochs,")


def test_ctrl_c_before_a_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    patch = """
        from recbole_endo.trainer import PluginTrainerMixin

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        PluginTrainerMixin.fit = interrupted
    """
    run = script(*TINY_RUN, "--epochs=1", cwd=tmp_path, patch=patch)
    assert run.returncode == 130, run.stderr[-2000:]
    assert run.stderr.splitlines() == [
        "interrupted before a checkpoint was written: nothing to resume; run the command again to start over"
    ]


def test_a_compare_entrys_option_overrides_the_same_option_on_the_command_line(tmp_path):
    """RecBole's Config ranks the command line above config_dict, where an entry's options go:
    ``BPR[epochs=200]`` beside ``--epochs=6`` once trained 6 epochs."""
    output_dir = tmp_path / "out"
    run = script(
        "--compare=BPR,BPR[epochs=3]", f"--config_files={TINY_YAML}", f"--data_path={DATA_DIR}", "--seeds=1",
        "--epochs=1", "--stopping_step=10", f"--output_dir={output_dir}", "--state=WARNING", cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    with open(output_dir / "runs.csv") as file:
        epochs = {row["entry"]: row["epochs"] for row in csv.DictReader(file)}
    assert epochs == {"BPR": "1", "BPR[epochs=3]": "3"}
