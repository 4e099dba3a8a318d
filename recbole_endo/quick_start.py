"""Quick start: train and evaluate any model (the plugin's or RecBole's) the way RecBole does.

The same flow as ``recbole.quick_start``, with the plugin's Config and model/trainer lookup, and
without ray (RecBole's ``objective_function`` imports it only to report to ray tune).
"""

import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from logging import getLogger
from types import SimpleNamespace

import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import DecisionTreeTrainer
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_endo.compat.checkpoint import load_weights, read_checkpoint
from recbole_endo.compat.feature_join import skip_feature_join
from recbole_endo.compat.run_scope import FILE_ONLY, keep_file_only_records_off, plugin_run
from recbole_endo.config import Config, check_options, option_source_lines
from recbole_endo.data.interactions import evaluation_split, training_rows
from recbole_endo.data.preparers import prepare_dataset
from recbole_endo.data.uniform_slice import held_out_slice
from recbole_endo.evaluation.protocols import check_evaluation_options, extra_evaluation, full_sort_per_user
from recbole_endo.registry import get_model
from recbole_endo.trainer import get_trainer


def build(config):
    """Dataset, splits, model and trainer for ``config``, seeded as RecBole seeds them: what a run
    trains and tests, built without training (the tuner, the benchmark and ``load_data_and_model``
    build so too).

    Returns:
        tuple: (dataset, model, trainer, (train_data, valid_data, test_data))
    """
    # Before the data loads. The runs below have checked before their log starts (_run_files);
    # the tuner and load_data_and_model build directly.
    check_options(config)
    init_seed(config["seed"], config["reproducibility"])
    for line in option_source_lines(config):  # which file set which option, the tuned file's included
        getLogger().info(line)
    prepare_dataset(config)  # a dataset with a preparer (endo-synth) is written when missing or stale
    dataset = create_dataset(config)
    check_evaluation_options(config, dataset)  # before training: a typo must not cost a run
    train_data, valid_data, test_data = data_preparation(config, dataset)
    train_data = training_rows(config, train_data)  # train_min_rating
    # Models that read features by id get batches without RecBole's feature join (join_features).
    skip_feature_join(config, get_model(config["model"]), (train_data, valid_data, test_data))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # RecBole names a checkpoint <model>-<time to the second>: runs started together in parallel
    # processes would write, and test, one shared file. The process id keeps them apart.
    stem, extension = os.path.splitext(trainer.saved_model_file)
    saved_model_file = [f"{stem}-{os.getpid()}{extension}"]
    if not config["single_spec"]:
        # Under DDP rank 0 writes the checkpoint and every rank tests it: all take rank 0's name.
        torch.distributed.broadcast_object_list(saved_model_file, src=0)
    trainer.saved_model_file = saved_model_file[0]
    return dataset, model, trainer, (train_data, valid_data, test_data)


@contextmanager
def _run_files(config, resume_file=None):
    """Check ``config`` (:func:`check_options`), start RecBole's log (``init_logger``) and run the
    body as one run whose files are its own: if it fails, its log file, its TensorBoard folder and
    its checkpoint are removed (never the checkpoint ``resume_file`` it continues, nor another
    run's files). An interrupt (Ctrl-C) removes nothing: its ``checkpoint`` attribute names the
    checkpoint to resume from, or is None. An error raised once ``config`` is built carries
    ``show_traceback`` True when RecBole's ``state`` is DEBUG (the script then shows it whole)."""
    run = SimpleNamespace(trainer=None, log_file=None)  # the body sets the trainer once built
    log_file = None
    try:
        check_options(config)  # before init_logger: a refused option leaves no log
        init_seed(config["seed"], config["reproducibility"])
        handlers = set(logging.getLogger().handlers)
        init_logger(config)
        keep_file_only_records_off(set(logging.getLogger().handlers) - handlers)
        log_file = run.log_file = _new_log_file(handlers)
        yield run
    except KeyboardInterrupt as interrupt:
        checkpoint = run.trainer.saved_model_file if run.trainer is not None else None
        interrupt.checkpoint = checkpoint if checkpoint and os.path.isfile(checkpoint) else None
        raise
    except Exception as error:
        _remove_run_files(log_file, run.trainer, resume_file)
        error.show_traceback = str(config["state"]).lower() == "debug"
        raise


def _new_log_file(handlers):
    """The log file RecBole's ``init_logger`` has just opened, if the root logger gained a file
    handler (it adds none while the root logger has handlers) and the file is new: a run started
    in the same second with the same options writes into the same file, which is then not this
    run's alone."""
    for handler in logging.getLogger().handlers:
        if handler not in handlers and isinstance(handler, logging.FileHandler):
            if os.path.isfile(handler.baseFilename) and os.path.getsize(handler.baseFilename) == 0:
                return handler.baseFilename
    return None


def _remove_run_files(log_file, trainer, resume_file):
    """Remove what a failed run wrote (see :func:`_run_files`): the log file, the TensorBoard
    folder RecBole's ``get_tensorboard`` names after it, and the checkpoint (but ``resume_file``)."""
    if trainer is not None:
        trainer.tensorboard.close()  # its writer thread would write into the removed folder
        checkpoint = trainer.saved_model_file
        if resume_file is None or os.path.abspath(checkpoint) != os.path.abspath(resume_file):
            with suppress(FileNotFoundError):  # written by rank 0 only under DDP
                os.remove(checkpoint)
    if log_file is not None:
        tensorboard = os.path.join("log_tensorboard", os.path.basename(log_file).split(".")[0])
        shutil.rmtree(tensorboard, ignore_errors=True)
        with suppress(FileNotFoundError):
            os.remove(log_file)


def _timed(method, seconds):
    """``method``, appending the seconds of each call to ``seconds``."""

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = method(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    return timed


def _duration(seconds):
    """``seconds`` for a reader: ``"42 s"``, ``"3 min 5 s"``, ``"1 h 2 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _progress(trainer, train_seconds, valid_seconds):
    """``fit``'s callback after each validation: one line with the epoch's seconds, the best
    validation so far and how long the run can still take, the later of early stopping (its
    ``stopping_step`` validations without improvement) and the ``epochs`` limit."""

    def report(epoch, valid_score):
        per_epoch = (sum(train_seconds) + sum(valid_seconds)) / len(train_seconds)
        validations_left = trainer.stopping_step + 1 - trainer.cur_step
        last = min(trainer.epochs - 1, epoch + validations_left * trainer.eval_step)
        trainer.logger.info(
            f"epoch {epoch} done ({per_epoch:.1f} s an epoch); best {trainer.valid_metric} "
            f"{trainer.best_valid_score:.4f} at epoch {trainer.best_epoch}; ends by epoch {last} unless "
            f"validation improves: at most {_duration((last - epoch) * per_epoch)} left"
        )

    return report


def _train_and_test(config, trainer, splits, saved, verbose=True):
    """Train ``trainer`` on ``splits`` (:func:`build`'s), test it and time both: the result that
    :func:`run_recbole_endo` returns, less ``log_file``."""
    train_data, valid_data, test_data = splits
    # Timed on the instance, so every trainer (RecBole's too) is measured the same way.
    train_seconds, valid_seconds = [], []
    trainer._train_epoch = _timed(trainer._train_epoch, train_seconds)
    trainer._valid_epoch = _timed(trainer._valid_epoch, valid_seconds)
    progress = {}
    if verbose and not isinstance(trainer, DecisionTreeTrainer):  # whose fit takes no callback
        progress["callback_fn"] = _progress(trainer, train_seconds, valid_seconds)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=verbose, saved=saved, show_progress=config["show_progress"], **progress
    )
    start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    test_eval_seconds = time.perf_counter() - start
    per_user = full_sort_per_user(config, trainer.evaluator, test_data)
    datasets = [evaluation_split(data) for data in splits]
    test_result.update(extra_evaluation(config, trainer.model, datasets, per_user))
    uid_field = datasets[0].uid_field
    epochs = len(trainer.train_loss_dict)
    # No validation (eval_step <= 0): fit keeps the last epoch.
    best_epoch = trainer.best_epoch if trainer.best_epoch is not None else max(trainer.train_loss_dict)
    return {
        "model": config["model"],
        "valid_metric": config["valid_metric"].lower(),
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "fit_seconds": sum(train_seconds) + sum(valid_seconds),
        "train_s_per_epoch": sum(train_seconds) / len(train_seconds),
        "valid_s_per_eval": sum(valid_seconds) / max(len(valid_seconds), 1),
        "test_eval_s": test_eval_seconds,
        "checkpoint": trainer.saved_model_file if saved else None,
        "tuned_file": getattr(config, "tuned_file", None),
        # The uniform slice the converters left out of the test, if the dataset folder has one.
        "uniform_slice": held_out_slice(config),
        # Each test user's value of each metric that has one, users named by their raw ids.
        "per_user": {key: (datasets[0].id2token(uid_field, users), values) for key, (users, values) in per_user.items()},
    }


@plugin_run()
def run_recbole_endo(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None, resume_file=None
):
    r"""Train ``model`` on ``dataset`` and test it, as RecBole's ``run_recbole`` does.

    Args:
        model (str, optional): a plugin or RecBole model name; else taken from the config.
        dataset (str, optional): dataset name; else taken from the config.
        config_file_list (list, optional): YAML files overriding the defaults.
        config_dict (dict, optional): options overriding the files.
        saved (bool): save the best checkpoint and test with it.
        queue: a multiprocessing queue to put the result on (for spawned processes).
        resume_file (str, optional): a checkpoint of an interrupted run with the same options to
            continue from (it is updated in place); the run ends as the uninterrupted one would.
            This run's learning_rate and weight_decay may differ from the checkpoint's: it trains with its own.

    Returns:
        dict: RecBole's keys (``model``, ``best_valid_score``, ``valid_score_bigger``,
        ``best_valid_result``, ``test_result``), and ``valid_metric``, ``epochs``, ``best_epoch``,
        the seconds (``fit_seconds``, ``train_s_per_epoch``, ``valid_s_per_eval``,
        ``test_eval_s``), ``checkpoint``, ``tuned_file``, ``uniform_slice``, ``per_user`` and
        ``log_file`` (:func:`_train_and_test`). A dict, as RecBole's ``run_recbole`` and
        ``objective_function`` return: RecBole's ``HyperTuning`` reads these keys.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    with _run_files(config, resume_file) as run:
        logger = getLogger()
        logger.info(sys.argv)
        logger.info(config, extra=FILE_ONLY)
        dataset, model, run.trainer, splits = build(config)
        logger.info(dataset, extra=FILE_ONLY)
        logger.info(model, extra=FILE_ONLY)
        if resume_file:
            run.trainer.resume_checkpoint(resume_file)
        result = _train_and_test(config, run.trainer, splits, saved)
        result["log_file"] = run.log_file
        logger.info(
            "The running environment of this training is as follows:\n" + get_environment(config).draw(), extra=FILE_ONLY
        )
        logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
        logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
        if not config["single_spec"]:
            torch.distributed.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


@plugin_run()
def objective_function(config_dict=None, config_file_list=None, saved=True):
    """The objective for RecBole's ``HyperTuning``: train, select on validation, report test."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    with _run_files(config) as run:
        _, _, run.trainer, splits = build(config)
        return _train_and_test(config, run.trainer, splits, saved, verbose=False)


@plugin_run()
def load_data_and_model(model_file):
    r"""Load a checkpoint with torch's safe loader and rebuild its dataset, splits and model.

    Returns:
        tuple: (config, model, dataset, train_data, valid_data, test_data)
    """
    checkpoint = read_checkpoint(model_file)
    config = checkpoint["config"]
    init_logger(config)
    getLogger().info(config)
    dataset, model, _, (train_data, valid_data, test_data) = build(config)
    load_weights(model, checkpoint)
    return config, model, dataset, train_data, valid_data, test_data
