"""The tuner on the tiny data: resumable studies, tuned files the runner layers, the test split
never read during a search, search spaces checked. No timing is asserted."""

import importlib.util
import logging
import os
import re
import shutil
import subprocess

import optuna
import pytest
import torch
import sqlalchemy
import yaml

from recbole_endo import Config, config as config_module, quick_start
from recbole_endo.config import properties_folder
from recbole_endo.experiments import provenance, tune as tune_module
from recbole_endo.experiments.tune import main, read_search_space, tune


@pytest.fixture(autouse=True)
def clean_checkout(monkeypatch):
    """The tuner refuses a checkout with uncommitted changes: the tests tune as at a clean commit,
    whatever state the checkout that runs them is in."""
    monkeypatch.setattr(tune_module, "git_commit", lambda: "abc1234")


def write_space(path, text="learning_rate: {low: 0.001, high: 0.05, log: true}\nembedding_size: {choices: [4, 8]}\n"):
    path.write_text(text)
    return str(path)


def tiny_search(tiny, tmp_path, trials, log=lambda *args, **kwargs: None, **kwargs):
    return tune(
        "TwoTowerSplit", tiny["dataset"], trials, str(tmp_path / "tune"), search_space=write_space(tmp_path / "space.yaml"),
        config_file_list=tiny["config_file_list"], config_dict={**tiny["config_dict"], "epochs": 2},
        tuned_dir=str(tmp_path / "tuned"), log=log, **kwargs,
    )


def test_an_interrupted_search_resumes_and_writes_the_best_trial_as_the_tuned_file(tiny, tmp_path):
    first = tiny_search(tiny, tmp_path, trials=2)
    assert len(first.trials) == 2
    assert (tmp_path / "tune" / "tune.db").is_file()
    study = tiny_search(tiny, tmp_path, trials=3)  # a new process would open the same database
    assert [trial.number for trial in study.trials] == [0, 1, 2]
    assert first.trials[0].params == study.trials[0].params  # the stored trials, not new ones
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)
    assert all(0 <= trial.value <= 1 and trial.user_attrs["epochs"] == 2 for trial in study.trials)
    best = max(study.trials, key=lambda trial: trial.value)
    tuned_text = (tmp_path / "tuned" / "TwoTowerSplit.yaml").read_text()
    assert f"trial {best.number}" in tuned_text and "best of 3 trials" in tuned_text
    assert f"in runs given --tuned={tmp_path / 'tuned'}." in tuned_text
    # each trial records the commit it ran at, and the tuned file names the best trial's
    assert all(trial.user_attrs["commit"] == "abc1234" for trial in study.trials)
    assert tuned_text.startswith("# Written by python -m recbole_endo.experiments.tune; best trial run at commit abc1234:")
    assert yaml.safe_load(tuned_text) == best.params
    summary = (tmp_path / "tune" / "TwoTowerSplit-tiny.md").read_text()
    assert "3 complete or pruned trial(s) of 3 asked" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and rows[0].startswith(f"| {best.number} | complete | {best.value:.4f} |")
    assert len(tiny_search(tiny, tmp_path, trials=3).trials) == 3  # nothing left to run


def test_a_new_study_first_runs_the_models_defaults(tiny, tmp_path):
    study = tiny_search(tiny, tmp_path, trials=1)
    # tiny.yaml's embedding_size 8 and the plugin's learning_rate 0.001 lie in the space
    assert study.trials[0].params == {"learning_rate": 0.001, "embedding_size": 8}


def test_the_test_split_is_never_evaluated_during_a_search(tiny, tmp_path, monkeypatch):
    build, built, evaluated = tune_module.build, {}, []

    def watched_build(config):
        dataset, model, trainer, splits = build(config)
        built["splits"], evaluate = splits, trainer.evaluate

        def recorded(data, *args, **kwargs):
            evaluated.append(data)
            return evaluate(data, *args, **kwargs)

        trainer.evaluate = recorded
        return dataset, model, trainer, splits

    monkeypatch.setattr(tune_module, "build", watched_build)
    tiny_search(tiny, tmp_path, trials=1)
    _, valid_data, _ = built["splits"]
    assert len(evaluated) == 2 and all(data is valid_data for data in evaluated)  # one validation per epoch


def test_tuned_files_are_layered_after_the_dataset_file_unless_tuned_is_false(tiny, tmp_path, monkeypatch, caplog):
    tuned = tmp_path / "tuned" / "tiny" / "TwoTowerSplit.yaml"
    tuned.parent.mkdir(parents=True)
    tuned.write_text("learning_rate: 0.0123\nembedding_size: 4\n")
    monkeypatch.setattr(config_module, "default_tuned_folder", lambda dataset: tmp_path / "tuned" / dataset)
    config = Config(model="TwoTowerSplit", **tiny)
    assert config["learning_rate"] == 0.0123 and config.tuned_file == str(tuned)
    assert config["embedding_size"] == 8  # tests/data/tiny.yaml's: the user's files come after the tuned one
    untuned = Config(model="TwoTowerSplit", **{**tiny, "config_dict": {**tiny["config_dict"], "tuned": False}})
    assert untuned["learning_rate"] == 0.001 and untuned.tuned_file is None
    mine = Config(model="TwoTowerSplit", **{**tiny, "config_dict": {**tiny["config_dict"], "learning_rate": 0.05}})
    assert mine["learning_rate"] == 0.05  # an option given by the user wins over the tuned one
    assert Config(model="TwoTowerConcat", **tiny).tuned_file is None  # another model's file is not read
    caplog.set_level(logging.INFO)
    quick_start.build(config)
    # embedding_size is tests/data/tiny.yaml's: the tuned file's line names only what it set
    assert f"options from {os.path.relpath(tuned)} (tuned: false runs without it): learning_rate\n" in caplog.text


def test_a_folder_given_as_tuned_replaces_the_default_tuned_file(tiny, tmp_path, monkeypatch):
    default = tmp_path / "tuned" / "tiny" / "TwoTowerSplit.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("learning_rate: 0.0123\n")
    monkeypatch.setattr(config_module, "default_tuned_folder", lambda dataset: tmp_path / "tuned" / dataset)
    protocol = tmp_path / "sequential-tuned"
    protocol.mkdir()
    (protocol / "TwoTowerSplit.yaml").write_text("learning_rate: 0.0456\n")

    def config(tuned):
        return Config(model="TwoTowerSplit", **{**tiny, "config_dict": {**tiny["config_dict"], "tuned": tuned}})

    assert config(True)["learning_rate"] == 0.0123
    scoped = config(str(protocol))
    assert scoped["learning_rate"] == 0.0456 and scoped.tuned_file == str(protocol / "TwoTowerSplit.yaml")
    empty = tmp_path / "nothing-tuned"
    empty.mkdir()
    untuned = config(str(empty))
    assert untuned["learning_rate"] == 0.001 and untuned.tuned_file is None
    with pytest.raises(ValueError, match=r"option 'tuned' names the folder .*missing.*does not exist"):
        config(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"option 'tuned' must be true, false or a folder"):
        config(3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rat: {low: 0.001, high: 0.1}\n", r"option 'learning_rat'.*no such config option"),
        ("learning_rate: {low: 0.1, high: 0.001}\n", r"option 'learning_rate'.*low < high"),
        ("learning_rate: {low: 0.0, high: 0.1, log: true}\n", r"low > 0 on a log scale"),
        ("learning_rate: {choices: []}\n", r"choices must be a non-empty list"),
        ("learning_rate: 0.01\n", r"expected \{low, high\[, log\]\} or \{choices"),
    ],
)
def test_malformed_search_spaces_are_refused_naming_the_file_and_option(tiny, tmp_path, text, message):
    path = write_space(tmp_path / "space.yaml", text)
    with pytest.raises(ValueError, match=message) as error:
        read_search_space(path, Config(model="TwoTowerSplit", **tiny))
    assert path in str(error.value)


def test_every_shipped_search_space_names_only_options_its_model_has(tiny):
    from recbole_endo.experiments.tune import search_space_file

    general = ("BPR", "LightGCN", "EASE", "MultiVAE", "TwoTowerConcat", "TwoTowerSplit", "EndoDecouple")
    sequential = ("SASRec", "SASRecF", "FDSA", "GRU4Rec", "GRU4RecF", "SplitSASRec", "EndoSASRec")
    for model in general + sequential:
        space = read_search_space(str(search_space_file(model)), Config(model=model, **tiny))
        assert space, model


def test_an_option_fixed_on_the_command_line_is_taken_out_of_the_space(tiny, tmp_path, monkeypatch, capsys):
    trained = []

    def record(trial, model, dataset, config_file_list, config_dict, params):
        trained.append({**config_dict, **params})
        return 0.1

    monkeypatch.setattr(tune_module, "train_on_validation", record)
    command = [
        "--model=TwoTowerSplit", "--dataset=tiny", f"--search_space={write_space(tmp_path / 'space.yaml')}",
        f"--output_dir={tmp_path / 'tune'}", f"--config_files={tiny['config_file_list'][0]}",
        f"--data_path={tiny['config_dict']['data_path']}",
    ]
    main([*command, "--trials=2", f"--tuned_dir={tmp_path / 'scoped'}", "--learning_rate=0.0321"])
    study = optuna.load_study(study_name="TwoTowerSplit-tiny", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    assert [set(trial.params) for trial in study.trials] == [{"embedding_size"}] * 2
    assert len(trained) == 2 and all(options["learning_rate"] == 0.0321 for options in trained)
    assert "space.yaml less learning_rate;" in (tmp_path / "tune" / "TwoTowerSplit-tiny.md").read_text()
    assert (tmp_path / "scoped" / "TwoTowerSplit.yaml").is_file()  # --tuned_dir: not recbole_endo/properties/tuned/tiny/
    with pytest.raises(SystemExit):
        main([*command, "--trials=1", "--learning_rate=0.01", "--embedding_size=4"])
    assert "every option of the search space is fixed" in capsys.readouterr().err


def test_a_dirty_checkout_is_refused_unless_allowed_and_then_recorded(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune_module, "git_commit", lambda: "abc1234-dirty")
    monkeypatch.setattr(tune_module, "train_on_validation", lambda *args: 0.1)
    command = [
        "--model=TwoTowerSplit", "--dataset=tiny", f"--search_space={write_space(tmp_path / 'space.yaml')}",
        f"--output_dir={tmp_path / 'tune'}", f"--config_files={tiny['config_file_list'][0]}",
        f"--data_path={tiny['config_dict']['data_path']}", "--trials=1", f"--tuned_dir={tmp_path / 'tuned'}",
    ]
    with pytest.raises(SystemExit):
        main(command)
    error = capsys.readouterr().err
    assert "uncommitted changes at commit abc1234" in error and "pass --allow_dirty" in error
    assert not (tmp_path / "tune").exists()  # no study, no trial
    main([*command, "--allow_dirty"])
    study = optuna.load_study(study_name="TwoTowerSplit-tiny", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    assert study.trials[0].user_attrs["commit"] == "abc1234-dirty"
    assert "best trial run at commit abc1234-dirty:" in (tmp_path / "tuned" / "TwoTowerSplit.yaml").read_text()


def fake_training(monkeypatch):
    """Trials without training: a trial scores its learning rate. Returns the trials trained."""
    trained = []

    def record(trial, model, dataset, config_file_list, config_dict, params):
        trained.append(params)
        return params["learning_rate"]

    monkeypatch.setattr(tune_module, "train_on_validation", record)
    return trained


def tiny_command(tiny, tmp_path, *options):
    return [
        "--model=TwoTowerSplit", "--dataset=tiny", f"--search_space={write_space(tmp_path / 'space.yaml')}",
        f"--config_files={tiny['config_file_list'][0]}", f"--data_path={tiny['config_dict']['data_path']}", *options,
    ]


def snapshot(folder, contents=True):
    """Every file under ``folder``: its path and (with ``contents``) its bytes."""
    return {str(path): path.read_bytes() if contents else None for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_search_given_an_output_dir_writes_nothing_into_the_repository(tiny, tmp_path, monkeypatch, capsys):
    fake_training(monkeypatch)
    repository = properties_folder().parents[1]
    # the shipped tuned files, byte for byte; the project's studies by name (a study may be running)
    tuned_before, studies_before = snapshot(properties_folder() / "tuned"), snapshot(repository / "results" / "tune", False)
    assert tuned_before and studies_before
    # the packaged search space, named in the summary by its place in the package, not by this checkout's path
    command = [option for option in tiny_command(tiny, tmp_path, f"--output_dir={tmp_path / 'out'}", "--trials=2")
               if not option.startswith("--search_space=")]
    main(command)
    assert snapshot(properties_folder() / "tuned") == tuned_before
    assert snapshot(repository / "results" / "tune", False) == studies_before
    assert not (properties_folder() / "tuned" / "tiny").exists()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["TwoTowerSplit-tiny.md", "tune.db", "tuned"]
    assert "; search space recbole_endo/properties/search/TwoTowerSplit.yaml;" in (tmp_path / "out" / "TwoTowerSplit-tiny.md").read_text()
    tuned = tmp_path / "out" / "tuned" / "TwoTowerSplit.yaml"
    assert f"in runs given --tuned={tmp_path / 'out' / 'tuned'}." in tuned.read_text()
    last = capsys.readouterr().out.splitlines()[-1]
    assert f"written to {tuned}: runs read it with --tuned={tmp_path / 'out' / 'tuned'}; rerun this command with --promote" in last
    # a run does not read it unless told to
    config = Config(model="TwoTowerSplit", **tiny)
    assert config.tuned_file is None and config["learning_rate"] == 0.001
    told = Config(model="TwoTowerSplit", **{**tiny, "config_dict": {**tiny["config_dict"], "tuned": str(tuned.parent)}})
    assert told.tuned_file == str(tuned) and told["learning_rate"] == yaml.safe_load(tuned.read_text())["learning_rate"]


def test_the_default_output_dir_is_under_the_working_directory_and_ignored_by_git(tiny, tmp_path, monkeypatch):
    fake_training(monkeypatch)
    main(tiny_command(tiny, tmp_path, "--trials=1"))  # the tests run in tmp_path
    assert (tmp_path / "saved" / "tune" / "tiny" / "tune.db").is_file()
    assert (tmp_path / "saved" / "tune" / "tiny" / "tuned" / "TwoTowerSplit.yaml").is_file()
    if shutil.which("git") is None or not (properties_folder().parents[1] / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", str(properties_folder().parents[1]), "check-ignore", "-q", tune_module.default_output_dir("coat") + "/tune.db"]
    )
    assert ignored.returncode == 0


def test_promote_writes_the_best_trial_to_the_folder_every_run_reads(tiny, tmp_path, monkeypatch, capsys):
    trained = fake_training(monkeypatch)
    monkeypatch.setattr(config_module, "default_tuned_folder", lambda dataset: tmp_path / "properties" / dataset)
    command = tiny_command(tiny, tmp_path, f"--output_dir={tmp_path / 'out'}", "--trials=3")
    main(command)
    assert len(trained) == 3 and not (tmp_path / "properties").exists()
    main([*command, "--promote"])  # the study holds its trials: promoting runs none
    assert len(trained) == 3
    promoted = tmp_path / "properties" / "tiny" / "TwoTowerSplit.yaml"
    kept = tmp_path / "out" / "tuned" / "TwoTowerSplit.yaml"
    assert yaml.safe_load(promoted.read_text()) == yaml.safe_load(kept.read_text())
    assert "for TwoTowerSplit on tiny in every run; --tuned=false runs without it" in promoted.read_text()
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"written to {promoted}: every run of TwoTowerSplit on tiny now layers it (--tuned=false: not)"
    )
    config = Config(model="TwoTowerSplit", **tiny)
    assert config.tuned_file == str(promoted)
    with pytest.raises(SystemExit):
        main([*command, "--promote", f"--tuned_dir={tmp_path / 'other'}"])
    assert "--promote writes recbole_endo/properties/tuned/tiny/" in capsys.readouterr().err


def test_the_opening_line_counts_the_trials_the_study_holds(tiny, tmp_path, monkeypatch):
    fake_training(monkeypatch)
    lines = []
    tiny_search(tiny, tmp_path, trials=2, log=lambda line, **kwargs: lines.append(line))
    # a new study holds no trial: its queued defaults trial is waiting, not done
    assert "in sqlite:///" in lines[0] and ": 0 complete or pruned trial(s) (and 1 waiting) so far, 2 to run;" in lines[0]
    lines.clear()
    tiny_search(tiny, tmp_path, trials=3, log=lambda line, **kwargs: lines.append(line))
    assert ": 2 complete or pruned trial(s) so far, 1 to run;" in lines[0]


def test_the_tuned_folder_holds_only_files_the_tuner_wrote_naming_it_as_it_is_run():
    folder = properties_folder() / "tuned"
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    assert files
    for path in files:
        assert path.suffix == ".yaml" and len(path.relative_to(folder).parts) == 2, path  # <dataset>/<Model>.yaml
        header = path.read_text().splitlines()[0]
        assert re.match(r"# Written by python -m ([\w.]+)", header)[1] == tune_module.__name__, path


def test_recbole_hyper_tuning_runs_the_objective_function(tiny, tmp_path):
    """RecBole's own HyperTuning (hyperopt) over the plugin's objective_function."""
    pytest.importorskip("hyperopt")
    from recbole.trainer import HyperTuning

    from recbole_endo.quick_start import objective_function

    params = tmp_path / "hyper.test"
    params.write_text("learning_rate choice [0.01,0.001]\n")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({"model": "TwoTowerSplit", **tiny["config_dict"], "epochs": 1}))
    hyper = HyperTuning(
        objective_function, algo="exhaustive", params_file=str(params),
        fixed_config_file_list=[*tiny["config_file_list"], str(fixed)], max_evals=2,
    )
    hyper.run()
    assert len(hyper.params2result) == 2
    assert hyper.best_params["learning_rate"] in (0.01, 0.001)


def test_a_process_that_loses_the_race_to_create_a_new_database_opens_the_study(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    made = tune_module.rdb_storage
    calls = []

    def racing(storage_url):
        calls.append(storage_url)
        if len(calls) == 1:  # another process creates the tables first; this one then fails on one of them
            made(storage_url)
            raise sqlalchemy.exc.OperationalError("CREATE TABLE alembic_version", {}, Exception("table alembic_version already exists"))
        return made(storage_url)

    monkeypatch.setattr(tune_module, "rdb_storage", racing)
    study = tune_module.open_study("BPR-tiny", url, "maximize", seed=0)
    assert calls == [url, url]
    assert study.study_name == "BPR-tiny" and optuna.load_study(study_name="BPR-tiny", storage=url).direction.name == "MAXIMIZE"


def test_a_commit_is_dirty_for_changed_code_not_for_what_runs_write(tmp_path):
    """The tuner continues the project's studies in the tracked results/ folder when told
    (--output_dir=results/tune/<dataset>): that must not mark the next study's commit dirty, but a
    changed source file must."""
    package = tmp_path / "recbole_endo"
    package.mkdir()
    shutil.copy(provenance.__file__, package / "provenance.py")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tune.db").write_text("study 1")
    (tmp_path / "recbole_endo" / "properties" / "tuned").mkdir(parents=True)
    (tmp_path / "recbole_endo" / "properties" / "tuned" / "BPR.yaml").write_text("learning_rate: 0.01")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    spec = importlib.util.spec_from_file_location("copied_provenance", package / "provenance.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "tune.db").write_text("study 1, study 2")
    (tmp_path / "recbole_endo" / "properties" / "tuned" / "BPR.yaml").write_text("learning_rate: 0.02")
    assert copied.git_commit() == commit
    with open(package / "provenance.py", "a") as file:
        file.write("# changed\n")
    assert copied.git_commit() == f"{commit}-dirty"


def test_trials_train_with_the_threads_asked_and_zero_threads_are_refused(tiny, tmp_path, monkeypatch, capsys):
    threads_in_trials = []
    monkeypatch.setattr(tune_module, "git_commit", lambda: "abc1234")
    monkeypatch.setattr(tune_module, "train_on_validation", lambda *args: threads_in_trials.append(torch.get_num_threads()) or 0.1)
    command = [
        "--model=TwoTowerSplit", "--dataset=tiny", f"--search_space={write_space(tmp_path / 'space.yaml')}",
        f"--output_dir={tmp_path / 'tune'}", f"--config_files={tiny['config_file_list'][0]}",
        f"--data_path={tiny['config_dict']['data_path']}", "--trials=1",
    ]
    with pytest.raises(SystemExit):
        main([*command, "--threads=0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        main([*command, "--threads=1"])
    finally:
        torch.set_num_threads(before)
    assert threads_in_trials == [1]
