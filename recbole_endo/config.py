"""Configuration: RecBole's Config with the plugin's YAML defaults layered over RecBole's own.

Layering, lowest to highest precedence: RecBole's properties, the plugin's ``overall.yaml``, for a
sequential model (RecBole's ``ModelType.SEQUENTIAL``) the plugin's ``sequential.yaml``, the
plugin's ``model/<Model>.yaml``, the plugin's ``dataset/<dataset>.yaml``, the tuned
``tuned/<dataset>/<Model>.yaml`` that ``python -m recbole_endo.experiments.tune --promote`` writes (the
option ``tuned``: False leaves it out; a folder reads ``<folder>/<Model>.yaml`` instead, for a
protocol tuned apart, e.g. a sequential or cold-start split of the dataset), then (as in
RecBole) the user's ``config_file_list``, ``config_dict`` and ``--key=value`` on the command line.
A run logs first which of these set which option (:func:`option_source_lines`).

The plugin's Config pickles as plain data (see :func:`restore_config`), so checkpoints load with
torch's safe loader (``weights_only=True``); RecBole's own Config is left as it is.
"""

import numbers
import os
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from recbole.utils import EvaluatorType, InputType, ModelType

from recbole_endo.compat.config import FixedRecBoleConfig
from recbole_endo.options import check_raw_ratings, number_option
from recbole_endo.registry import get_model


def properties_folder():
    """The plugin's ``properties`` folder, inside the package (as RecBole's ``recbole/properties``):
    the imported package's own, so a second checkout (a git worktree at another commit) reads its
    own files, whichever checkout an editable install points at."""
    return Path(__file__).resolve().parent / "properties"


def default_tuned_folder(dataset):
    """The folder of tuned files for ``dataset`` unless a run or a study names another."""
    return properties_folder() / "tuned" / dataset


def tuned_file(model, dataset, folder=None):
    """Where ``python -m recbole_endo.experiments.tune`` writes the best options of ``model`` on
    ``dataset`` and a run reads them: ``<folder>/<Model>.yaml``, by default in :func:`default_tuned_folder`."""
    return (default_tuned_folder(dataset) if folder is None else Path(folder)) / f"{model}.yaml"


def is_sequential(model_class):
    return getattr(model_class, "type", None) == ModelType.SEQUENTIAL


def plugin_property_files(model, model_class, dataset, tuned_path=None):
    """The plugin's YAML files that exist for ``model`` (of class ``model_class``) on ``dataset``,
    lowest precedence first; the tuned file ``tuned_path`` last, when given."""
    root = properties_folder()
    candidates = [root / "overall.yaml"]
    if is_sequential(model_class):
        candidates.append(root / "sequential.yaml")
    candidates += [root / "model" / f"{model}.yaml", root / "dataset" / f"{dataset}.yaml"]
    if tuned_path is not None:
        candidates.append(tuned_path)
    return [str(file) for file in candidates if file.is_file()]


def layer_plugin_properties(config, model, model_class, dataset):
    """Layer the plugin's files over RecBole's (and :func:`sample_bpr_negatives`); ``config.tuned_file``
    is the tuned file layered, or None, and ``config.property_files`` each file layered with the
    options it holds, lowest precedence first (:func:`option_sources`)."""
    tuned = config.external_config_dict.get("tuned", True)
    if isinstance(tuned, str):
        if not os.path.isdir(tuned):
            raise ValueError(
                f"config option 'tuned' names the folder {tuned!r}, which does not exist: give the folder "
                "python -m recbole_endo.experiments.tune wrote (<output_dir>/tuned, or its --tuned_dir), or true "
                "(recbole_endo/properties/tuned/<dataset>/) or false"
            )
    elif not isinstance(tuned, bool):
        raise ValueError(f"config option 'tuned' must be true, false or a folder of tuned files, got {tuned!r}")
    tuned_path = None if tuned is False else tuned_file(model, dataset, None if tuned is True else tuned)
    config.tuned_file = None
    config.property_files = []
    for file in plugin_property_files(model, model_class, dataset, tuned_path):
        config_dict = config._update_internal_config_dict(file) or {}
        config.property_files.append([file, list(config_dict)])
        if tuned_path is not None and file == str(tuned_path):
            config.tuned_file = file
        elif file.endswith(f"{dataset}.yaml"):
            # RecBole lists a dataset file's keys as dataset parameters; keep them listed the same way.
            config.parameters["Dataset"] += [
                key for key in config_dict if key not in config.parameters["Dataset"]
            ]
    sample_bpr_negatives(config, model_class)


def option_sources(config):
    """Each plugin file layered into ``config``, lowest precedence first, with the options it set
    that no later layer set again: a later plugin file, or the run's own options (its config
    files, ``config_dict`` and command line, RecBole's external options)."""
    layers = getattr(config, "property_files", None) or []  # none in a checkpoint saved before they were kept
    given = set(config.external_config_dict)
    return [
        (file, [key for key in keys if key not in given.union(*(later for _, later in layers[index + 1 :]))])
        for index, (file, keys) in enumerate(layers)
    ]


def _shown_path(file):
    """``file`` relative to the working directory when it is under it, else absolute."""
    relative = os.path.relpath(file)
    return file if relative.startswith(os.pardir) else relative


def option_source_lines(config):
    """What a run logs first (INFO): which file set which option. One line per plugin file layered
    (:func:`option_sources`; the tuned file says how to run without it), then one line with the
    options the run was given (its config files, config_dict, command line), which override every
    file. RecBole's defaults set the rest."""
    lines = []
    for file, keys in option_sources(config):
        tuned = " (tuned: false runs without it)" if file == getattr(config, "tuned_file", None) else ""
        lines.append(f"options from {_shown_path(file)}{tuned}: {', '.join(keys) or 'none left, each one set again later'}")
    # RecBole's external options, lowest first: its config files, config_dict, the command line.
    given = [
        ("config files", getattr(config, "file_config_dict", {})),
        ("config_dict", getattr(config, "variable_config_dict", {})),
        ("command line", getattr(config, "cmd_config_dict", {})),
    ]
    parts = []
    for index, (source, options) in enumerate(given):
        later = set().union(*(later for _, later in given[index + 1 :]))
        keys = [key for key in options if key not in later]
        if keys:
            parts.append(f"{source}: {', '.join(keys)}")
    if parts:
        lines.append(f"options given to the run, over every file: {'; '.join(parts)}")
    return lines


def sample_bpr_negatives(config, model_class):
    """A model that ranks a BPR target against RecBole's sampled negative (the plugin's SASRecs, whose
    files turn the sampler off for their default CE, as RecBole requires) gets RecBole's default
    sampler with ``loss_type`` BPR; options that turn it off themselves are refused here, before
    data loading, rather than by a KeyError on the negatives the batches lack."""
    options = {**config.internal_config_dict, **config.external_config_dict}
    if not getattr(model_class, "bpr_reads_sampled_negative", False) or options.get("loss_type") != "BPR":
        return
    sampler = options.get("train_neg_sample_args")
    if not (sampler in (None, "None") or isinstance(sampler, dict) and sampler.get("distribution") in (None, "None")):
        return
    if "train_neg_sample_args" in config.external_config_dict:
        raise ValueError(
            "config option 'loss_type' BPR ranks each target against a sampled negative item, but "
            f"'train_neg_sample_args' is {sampler!r}, which samples none: leave the option out (BPR then "
            "samples RecBole's default, one uniform negative), give a distribution ({distribution: "
            "uniform, sample_num: 1}), or train with loss_type CE"
        )
    config.internal_config_dict["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}


# RecBole's options that its trainer and data loaders read, with the bounds number_option checks
# them against: RecBole itself takes any value and fails later (a learning rate 'abc' inside
# torch's Adam, epochs 0 by testing a checkpoint never saved).
RECBOLE_NUMBER_OPTIONS = {
    "learning_rate": {"low": 0, "low_open": True},
    "weight_decay": {"low": 0},
    "epochs": {"low": 1, "integer": True},
    "train_batch_size": {"low": 1, "integer": True},
    "eval_batch_size": {"low": 1, "integer": True},
    "eval_step": {"integer": True},  # 0 or less: no validation, the last epoch is kept
    "stopping_step": {"low": 0, "integer": True},
    "seed": {"low": 0, "high": 2**32 - 1, "integer": True},  # numpy's seeds
    "worker": {"low": 0, "integer": True},
}


def check_options(config):
    """Fail with a ValueError naming the option, its value and the values allowed, on a bad
    RecBole training option (:data:`RECBOLE_NUMBER_OPTIONS`), a bad ``train_min_rating``, or a bad
    option of a plugin model:
    its ``check_config`` checks every option the model reads that needs no dataset (types,
    ranges, choices and their combinations; RecBole's own models have none). It needs only the
    config, so runs call it before loading any data; what needs the dataset (a field loaded, a
    timestamp) is checked when the model is built."""
    for name, bounds in RECBOLE_NUMBER_OPTIONS.items():
        number_option(config, name, **bounds)
    if config["train_min_rating"] is not None:
        number_option(config, "train_min_rating")
        check_raw_ratings(config, "train_min_rating")
    check_model_options = getattr(config.model_class, "check_config", None)
    if check_model_options is not None:
        check_model_options(config)


def options_from_args(args):
    """``--key=value`` arguments as a config dict, values read as YAML (as ``--compare`` entries)."""
    config_dict = {}
    for arg in args:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not sep or not key:
            raise ValueError(f"argument '{arg}' is not --key=value")
        config_dict[key] = yaml.safe_load(value)
    return config_dict


class Config(FixedRecBoleConfig):
    """RecBole's Config with the plugin's properties layered over RecBole's for *every* model.

    Built-in models (BPR, LightGCN, ...) run through this Config get the same split, metrics and
    dataset fields as the plugin's models, so all of them are compared under one protocol;
    sequential models get the sequential one (``sequential.yaml``). The config pickles as plain
    data (:func:`restore_config`). What it fixes in RecBole's Config (distributed runs without
    CUDA, errors naming the file or option, ...) is :class:`~recbole_endo.compat.config.FixedRecBoleConfig`'s.
    """

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        layer_plugin_properties(self, model, model_class, dataset)

    def _set_default_parameters(self):
        super()._set_default_parameters()
        options = self.final_config_dict
        # "{seed}" in data_path picks a split written per seed, so --compare's seeds run on
        # different cold-start splits as they run on different random splits.
        options["data_path"] = options["data_path"].replace("{seed}", str(options["seed"]))
        # RecBole's progress bars where someone watches them (tqdm writes to stderr); not in a log file.
        if "show_progress" not in self.external_config_dict:
            options["show_progress"] = sys.stderr.isatty()

    def __reduce__(self):
        return restore_config, (config_state(self),)


# Enum types that appear in a RecBole Config's values; reconstructing an enum member runs no code.
CONFIG_ENUMS = (ModelType, InputType, EvaluatorType)
# Attributes derived on restore instead of pickled (a class object is not plain data).
DERIVED_ATTRIBUTES = ("yaml_loader", "model_class")


def _plain(value, key):
    """``value`` as data torch's safe loader accepts, or a TypeError naming the config key."""
    if value is None or isinstance(value, (str, bool, int, float, torch.device, *CONFIG_ENUMS)):
        return value
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, numbers.Number, str)):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, key) for v in value)
    raise TypeError(
        f"config key '{key}' holds a {type(value).__name__}, which a checkpoint cannot store "
        "as plain data; use str, int, float, bool, list or dict values"
    )


def config_state(config):
    """The plain-data state of a RecBole Config, as pickled into checkpoints."""
    state = {}
    for name, value in vars(config).items():
        if name in DERIVED_ATTRIBUTES:
            continue
        # The config's dicts (final_config_dict, ...) are keyed by option names: errors name those.
        is_options = isinstance(value, dict)
        state[name] = {k: _plain(v, k) for k, v in value.items()} if is_options else _plain(value, name)
    return state


def restore_config(state):
    """Rebuild a Config from :func:`config_state` without rerunning its side effects.

    It is the one function (besides RecBole's enums) allowed in torch's safe loader, so that a
    checkpoint's config loads with ``weights_only=True``. It sets attributes and looks the model
    class up by name; it evaluates nothing from the file.
    """
    if not isinstance(state, dict) or not isinstance(state.get("model"), str):
        raise TypeError("checkpoint config is not a recbole_endo config state")
    config = Config.__new__(Config)
    vars(config).update(state)
    config.yaml_loader = config._build_yaml_loader()
    config.model_class = get_model(state["model"])
    # A checkpoint loads into one process: the process group of a distributed run is gone, and
    # its data loaders would wait for the other ranks.
    config.final_config_dict["single_spec"] = True
    return config


def plain_config(config):
    """``config`` as the plugin's Config, which pickles as plain data (a RecBole Config, of a
    plugin model run by RecBole's own quick start, is copied into one)."""
    return config if isinstance(config, Config) else restore_config(config_state(config))
