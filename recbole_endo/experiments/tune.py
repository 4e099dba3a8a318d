"""Hyper-parameter search on the validation split, with Optuna: a TPE sampler, a median pruner on
the validation curve, and the study kept in a database, so that an interrupted search resumes
where it stopped and several processes (or machines sharing one database) work on one study.

    python -m recbole_endo.experiments.tune --model=EndoDecouple --dataset=coat --trials=32
    python -m recbole_endo.experiments.tune --model=BPR --dataset=ml-100k --trials=24 --storage=postgresql://host/db

Search space: ``recbole_endo/properties/search/<Model>.yaml``, one entry per option, e.g.::

    learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}   # a float (log scale)
    n_layers: {low: 1, high: 4}                              # an integer (both bounds integers)
    embedding_size: {choices: [32, 64, 128]}                 # one of these values (any YAML value)

``--search_space=FILE`` reads another file. Each option must be one the model's configuration
knows. Any other ``--key=value`` is a RecBole config option fixed for every trial; one that the
space searches is then taken out of it (e.g. ``--id_path=false`` beside ``--atom_dropout=0.5``,
which refuses an id path).

The first trial of a new study runs the model's defaults (those inside the space). A trial
trains the model as a run does (the plugin's config layering, without a tuned file;
RecBole's early stopping on ``valid_metric``; RecBole's log at ``state: WARNING`` unless given) and scores it by its best validation score; no
checkpoint is written and the test split is never evaluated. Each validation score is reported
to the pruner, which stops a trial whose curve is below the median of earlier trials at the same
epoch (after 5 finished trials and 5 validations). A trial whose loss turns non-finite fails
with the reason, and the search goes on.

Study: named ``<Model>-<dataset>`` (``--study_name``), stored at ``sqlite:///<output_dir>/tune.db``
unless ``--storage`` gives an SQLAlchemy URL; ``--output_dir`` is by default
``saved/tune/<dataset>`` under the working directory (ignored by git, as RecBole's checkpoints in
``saved/``). Rerunning the command continues the study until it holds ``--trials`` complete or
pruned trials; a trial whose process was killed is retried once (Optuna's heartbeat). Trials
train with the CPU cores that other running processes leave idle (``--threads`` to choose),
as runs do: two studies side by side on two cores take one thread each. Each
finished trial prints one line (number, parameters, validation score, best so far, seconds). At
the end ``<output_dir>/<study name>.md`` lists every trial, and the best trial's parameters are
written to ``<output_dir>/tuned/<Model>.yaml``, which a run reads only when given
``--tuned=<output_dir>/tuned``: a search changes no other run. ``--promote`` writes it to
``recbole_endo/properties/tuned/<dataset>/<Model>.yaml`` instead, which every later run of that model on that
dataset layers after the dataset file (``--tuned=false``: not); rerunning a finished study's
command with ``--promote`` runs no trial and promotes its best. ``--tuned_dir=FOLDER`` writes
``FOLDER/<Model>.yaml`` (runs given ``--tuned=FOLDER`` read it), e.g. for a protocol tuned apart
from the dataset's standard one (a sequential or cold-start split of it). The studies the
project's tables were tuned with are in ``results/tune/<dataset>/``: ``--output_dir=results/tune/<dataset>``
(or ``--storage=sqlite:///results/tune/<dataset>/tune.db``) continues one, and with ``--promote``
updates the shipped tuned file.

Provenance: each trial records the commit of the plugin's checkout it ran at, and the tuned file
names the best trial's. A checkout with uncommitted changes to tracked files is refused before
the study opens, since no commit holds the code its trials would run; ``--allow_dirty`` tunes
anyway, and the trials and the tuned file then say ``<commit>-dirty``.
"""

import argparse
import json
import math
import os
import sys
import time
import warnings

import optuna
import sqlalchemy
import yaml
from recbole.utils import init_logger

from recbole_endo.compat.run_scope import plugin_run
from recbole_endo.config import Config, options_from_args, properties_folder, tuned_file
from recbole_endo.experiments.benchmark import use_threads
from recbole_endo.experiments.provenance import git_commit
from recbole_endo.files import open_replacing
from recbole_endo.quick_start import build

# The pruner waits for this many finished trials, and each trial for this many validations.
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_STEPS = 5
HEARTBEAT_SECONDS = 60
# The trials that count towards --trials.
COUNTED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def default_output_dir(dataset):
    """Where a study's database, summary and tuned file go unless ``--output_dir`` says: under
    ``saved/`` in the working directory, which git ignores, so that a search writes nothing into
    the project's tracked files."""
    return os.path.join("saved", "tune", dataset)


def search_space_file(model):
    return properties_folder() / "search" / f"{model}.yaml"


def read_search_space(path, config):
    """The search space in ``path`` as ``{option: spec}``, checked: every option is one that
    ``config`` knows, and every spec is ``{low, high[, log]}`` or ``{choices}``; errors name the
    file and the option."""
    if not os.path.isfile(path):
        raise ValueError(
            f"no search space for model '{config['model']}': {path} does not exist; write one "
            "(see python -m recbole_endo.experiments.tune --help) or pass --search_space=FILE"
        )
    with open(path) as file:
        space = yaml.safe_load(file) or {}
    if not isinstance(space, dict) or not space:
        raise ValueError(f"search space {path} must map option names to {{low, high}} or {{choices}}")
    for option, spec in space.items():
        where = f"search space {path}, option '{option}'"
        if option not in config.final_config_dict:
            raise ValueError(f"{where}: model '{config['model']}' has no such config option")
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ValueError(f"{where}: choices must be a non-empty list, and alone")
            continue
        if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise ValueError(f"{where}: a range is {{low, high[, log]}}, got keys {sorted(spec)}")
        low, high = spec["low"], spec["high"]
        numbers = all(isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in (low, high))
        if not numbers or low >= high or (spec.get("log") and low <= 0):
            raise ValueError(f"{where}: needs numbers low < high (and low > 0 on a log scale), got {low!r}, {high!r}")
    return space


def choice_label(value):
    """A choice as Optuna stores it (None, bool, int, float or str); a list or dict as its JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def default_params(space, config):
    """The configuration's own values of the searched options that the space holds, as Optuna
    stores them: the first trial of a new study, so that a search cannot end below the model's
    defaults on validation, whatever its sampler draws."""
    params = {}
    for option, spec in space.items():
        value = config[option]
        if "choices" in spec:
            if value in spec["choices"]:
                params[option] = choice_label(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and spec["low"] <= value <= spec["high"]:
            params[option] = value
    return params


def suggest(trial, space):
    """The trial's value of every option in ``space``."""
    params = {}
    for option, spec in space.items():
        if "choices" in spec:
            labels = {choice_label(choice): choice for choice in spec["choices"]}
            params[option] = labels[trial.suggest_categorical(option, list(labels))]
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            params[option] = trial.suggest_int(option, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            params[option] = trial.suggest_float(option, spec["low"], spec["high"], log=bool(spec.get("log")))
    return params


def train_on_validation(trial, model, dataset, config_file_list, config_dict, params):
    """Train one trial's configuration; its best validation score (the test split is not read)."""
    # RecBole's INFO log of every trial (its config, dataset, model) would bury the progress lines.
    options = {"state": "WARNING", **config_dict, **params, "tuned": False}
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=options)
    with plugin_run():
        init_logger(config)
        _, _, trainer, (train_data, valid_data, _) = build(config)
        valid_epoch = trainer._valid_epoch
        validations = []

        def reported_valid_epoch(*args, **kwargs):
            score, result = valid_epoch(*args, **kwargs)
            trial.report(score, len(validations))
            validations.append(score)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {len(validations)} validations (last {score:.4f})")
            return score, result

        trainer._valid_epoch = reported_valid_epoch
        try:
            best_score, _ = trainer.fit(train_data, valid_data, verbose=False, saved=False, show_progress=False)
        except ValueError as error:
            # The plugin trainers' "loss component ... is nan/inf" and RecBole's "Training loss is nan".
            if "is nan" not in str(error) and "is inf" not in str(error):
                raise
            trial.set_user_attr("error", str(error))
            return math.nan  # Optuna records a NaN objective as a failed trial
    trial.set_user_attr("best_epoch", trainer.best_epoch)
    trial.set_user_attr("epochs", len(trainer.train_loss_dict))
    return best_score


def rdb_storage(url):
    with warnings.catch_warnings():  # Optuna marks the heartbeat experimental; it is what resumes killed trials
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def open_study(study_name, storage, direction, seed):
    if "://" not in storage:
        raise ValueError(f"--storage must be an SQLAlchemy URL (sqlite:///path/tune.db, postgresql://...), got {storage!r}")
    try:
        storage = rdb_storage(storage)
    except sqlalchemy.exc.SQLAlchemyError:
        # Processes started together on a new database race to create its tables (optuna#1092):
        # the loser fails on a table the winner made, and finds them all on its second try.
        time.sleep(1)
        storage = rdb_storage(storage)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS),
    )


def counted_trials(study):
    """The study's trials that count towards ``--trials``: complete and pruned."""
    return study.get_trials(deepcopy=False, states=COUNTED_STATES)


def holdings(study):
    """What the study holds, for the line a search opens with: its complete or pruned trials (those
    that count towards ``--trials``), then any others by state (failed, running in another
    process, waiting: a new study's queued defaults)."""
    others = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in COUNTED_STATES:
            others[trial.state.name.lower()] = others.get(trial.state.name.lower(), 0) + 1
    text = f"{len(counted_trials(study))} complete or pruned trial(s)"
    return text + (f" (and {', '.join(f'{count} {state}' for state, count in others.items())})" if others else "")


def progress_line(study, trial):
    """One line per finished trial: number, state, parameters, score, best so far, seconds."""
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    params = ", ".join(f"{key}={value}" for key, value in trial.params.items())
    value = "—" if trial.value is None else f"{trial.value:.4f}"
    try:
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:  # no complete trial yet
        best = "—"
    reason = trial.user_attrs.get("error", "")
    return f"trial {trial.number} {trial.state.name.lower()}: {params}; valid {value}; best {best}; {seconds:.0f} s {reason}".rstrip()


def summary_markdown(study, settings):
    """Every trial of the study: the complete ones best first, then the others by number."""
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    complete.sort(key=lambda trial: trial.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    trials = complete + [trial for trial in trials if trial.state != optuna.trial.TrialState.COMPLETE]
    names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    header = ["trial", "state", "valid score", "best epoch", "seconds", *names]
    lines = [settings, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in trials:
        seconds = "" if trial.datetime_complete is None else f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f}"
        cells = [
            str(trial.number), trial.state.name.lower(), "" if trial.value is None else f"{trial.value:.4f}",
            str(trial.user_attrs.get("best_epoch", "")), seconds, *(str(trial.params.get(name, "")) for name in names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tuned(path, study, model, dataset, params, metric, tuned_dir=None):
    """The best trial's ``params`` as the tuned file of ``model`` on ``dataset``, read by the runs
    given ``--tuned=<tuned_dir>`` (``tuned_dir`` None: the promoted file, read by every run)."""
    best = study.best_trial
    readers = "runs given --tuned=" + tuned_dir if tuned_dir else "every run; --tuned=false runs without it"
    header = (
        f"# Written by python -m recbole_endo.experiments.tune; best trial run at commit {best.user_attrs.get('commit', 'unknown')}: study '{study.study_name}', "
        f"best of {len(counted_trials(study))} trials, trial {best.number}, validation {metric} {best.value:.4f}.\n"
        f"# Layered after recbole_endo/properties/dataset/{dataset}.yaml for {model} on {dataset} in {readers}.\n"
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open_replacing(path) as file:
        file.write(header + yaml.safe_dump(params, sort_keys=False))


def tune(model, dataset, trials, output_dir, storage=None, study_name=None, search_space=None,
         config_file_list=None, config_dict=None, seed=0, tuned_dir=None, promote=False, allow_dirty=False, log=print):
    """Run (or continue) the study until it holds ``trials`` complete or pruned trials; write the
    summary and the tuned file: in ``tuned_dir`` when given, else with ``promote`` in
    ``recbole_endo/properties/tuned/<dataset>/`` (read by every run), else in ``<output_dir>/tuned/``. A
    checkout with uncommitted changes is refused unless ``allow_dirty``. Returns the study."""
    if promote and tuned_dir is not None:
        raise ValueError(
            f"--promote writes recbole_endo/properties/tuned/{dataset}/, which every run reads, and --tuned_dir names "
            f"another folder ({tuned_dir}): give one of them"
        )
    commit = git_commit() or "unknown"  # a study may be resumed at another commit: each trial records its own
    if commit.endswith("-dirty") and not allow_dirty:
        raise ValueError(
            f"the plugin's checkout has uncommitted changes at commit {commit[:-len('-dirty')]}: a tuned file "
            "names the commit its trials ran at, and none holds this code. Commit the changes, or pass "
            f"--allow_dirty to tune anyway (the trials and the tuned file then record {commit})"
        )
    config_dict = dict(config_dict or {})
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict={**config_dict, "tuned": False})
    space = read_search_space(search_space or str(search_space_file(model)), config)
    fixed = sorted(set(space) & set(config_dict))
    space = {option: spec for option, spec in space.items() if option not in fixed}
    if not space:
        raise ValueError(f"every option of the search space is fixed ({fixed}): nothing is left to search")
    os.makedirs(output_dir, exist_ok=True)
    study_name = study_name or f"{model}-{dataset}"
    storage = storage or f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'tune.db'))}"
    direction = "maximize" if config["valid_metric_bigger"] else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines say it once
    study = open_study(study_name, storage, direction, seed)
    if not study.trials:
        study.enqueue_trial(default_params(space, config))
    metric = config["valid_metric"]
    remaining = trials - len(counted_trials(study))
    log(f"study '{study_name}' in {storage}: {holdings(study)} so far, {max(remaining, 0)} to run; "
        f"{direction} validation {metric}" + (f"; fixed, not searched: {', '.join(fixed)}" if fixed else ""), flush=True)
    if remaining > 0:
        started = time.perf_counter()

        def objective(trial):
            trial.set_user_attr("commit", commit)
            return train_on_validation(trial, model, dataset, config_file_list, config_dict, suggest(trial, space))

        def report(study, trial):
            log(progress_line(study, trial), flush=True)

        stop = optuna.study.MaxTrialsCallback(trials, states=COUNTED_STATES)
        study.optimize(objective, n_trials=remaining, callbacks=[stop, report])
        log(f"{time.perf_counter() - started:.0f} s for this process's trials", flush=True)
    settings = (
        f"Study '{study_name}': {model} on {dataset}, {len(counted_trials(study))} complete or pruned trial(s) of "
        f"{trials} asked; TPE sampler (seed {seed}), median pruner; validation {metric} ({direction}); "
        f"search space {search_space or f'recbole_endo/properties/search/{model}.yaml'}" + (f" less {', '.join(fixed)}" if fixed else "")
        + f"; fixed options {json.dumps(config_dict, sort_keys=True)}."
    )
    with open_replacing(os.path.join(output_dir, f"{study_name}.md")) as file:
        file.write(summary_markdown(study, settings))
    try:
        best = study.best_trial
    except ValueError:
        log("no trial completed: no tuned file written", flush=True)
        return study
    if promote:
        readers = f"every run of {model} on {dataset} now layers it (--tuned=false: not)"
    elif tuned_dir is not None:
        readers = f"runs read it with --tuned={tuned_dir}"
    else:
        tuned_dir = os.path.join(output_dir, "tuned")
        readers = (
            f"runs read it with --tuned={tuned_dir}; rerun this command with --promote to write it to "
            f"{tuned_file(model, dataset)}, which every run of {model} on {dataset} reads"
        )
    path = str(tuned_file(model, dataset, tuned_dir))
    params = suggest(optuna.trial.FixedTrial(best.params), space)  # choices decoded as in the trial
    write_tuned(path, study, model, dataset, params, metric, tuned_dir)
    log(f"best: trial {best.number}, validation {metric} {best.value:.4f}, {params}; written to {path}: {readers}", flush=True)
    return study


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", required=True, help="the model to tune")
    parser.add_argument("--dataset", "-d", required=True, help="the dataset to tune it on")
    parser.add_argument("--trials", type=int, required=True, help="complete or pruned trials the study should hold")
    parser.add_argument(
        "--output_dir", default=None,
        help="where tune.db, the summary and tuned/<Model>.yaml go (default: saved/tune/<dataset>, ignored by git)",
    )
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL of the study database (default: sqlite in output_dir)")
    parser.add_argument("--study_name", default=None, help="default: <Model>-<dataset>")
    parser.add_argument("--search_space", default=None, help="default: recbole_endo/properties/search/<Model>.yaml")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files for every trial")
    parser.add_argument("--sampler_seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument(
        "--tuned_dir", default=None,
        help="folder of the tuned file (default: <output_dir>/tuned); runs read it with --tuned=FOLDER",
    )
    parser.add_argument(
        "--promote", action="store_true",
        help="write the best trial to recbole_endo/properties/tuned/<dataset>/<Model>.yaml, which every run of the model on "
        "the dataset reads; a finished study's command rerun with it runs no trial",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch's CPU threads for the trials (default: the cores that other running processes leave idle, at least one)",
    )
    parser.add_argument(
        "--allow_dirty", action="store_true",
        help="tune in a checkout with uncommitted changes; the trials and the tuned file record <commit>-dirty",
    )
    args, config_args = parser.parse_known_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv: they go in config_dict
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    use_threads(parser, args.threads)
    try:
        tune(
            args.model, args.dataset, args.trials, args.output_dir or default_output_dir(args.dataset),
            storage=args.storage, study_name=args.study_name, search_space=args.search_space,
            config_file_list=args.config_files.split() if args.config_files else None,
            config_dict=options_from_args(config_args), seed=args.sampler_seed, tuned_dir=args.tuned_dir,
            promote=args.promote, allow_dirty=args.allow_dirty,
        )
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
