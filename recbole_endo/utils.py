"""Model and trainer lookup: the plugin's classes first, then RecBole's built-ins.

:func:`register` also teaches RecBole's own ``get_model`` / ``get_trainer`` / ``Config`` about the
plugin, so RecBole's ``run_recbole`` and ``load_data_and_model`` work with the plugin's models.
"""

import importlib
import os
import sys

import recbole.config.configurator
import recbole.data.dataset.dataset
import recbole.data.utils
import recbole.trainer.trainer
import recbole.utils
import recbole.utils.logger
import recbole.utils.utils
from recbole.config import Config as RecBoleConfig
from recbole.evaluator.collector import Collector
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_endo.config import Config, enable_safe_config_pickling, init_device, layer_plugin_properties
from recbole_endo.evaluation import get_data_struct
from recbole_endo.model import MODELS
from recbole_endo.trainer import TRAINERS, distributed_data_parallel, enable_safe_checkpoints

_recbole_get_model = recbole.utils.utils.get_model
_recbole_get_trainer = recbole.utils.utils.get_trainer
_recbole_load_internal_config_dict = RecBoleConfig._load_internal_config_dict

RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


def recbole_model_names():
    """Names of RecBole's built-in models (those importable here)."""
    names = set()
    for package in RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        names.update(
            name
            for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender)
        )
    return sorted(names)


def get_model(model_name):
    """The model class called ``model_name``: a plugin model, else a RecBole built-in."""
    if model_name in MODELS:
        return MODELS[model_name]
    if isinstance(model_name, str) and model_name.isidentifier():
        try:
            return _recbole_get_model(model_name)
        except (ValueError, AttributeError, ImportError):  # ImportError: RecBole probes its xgboost/lightgbm wrappers
            pass
    raise ValueError(
        f"model '{model_name}' is neither a recbole_endo model ({', '.join(sorted(MODELS))}) "
        f"nor a RecBole model ({', '.join(recbole_model_names())})"
    )


def get_trainer(model_type, model_name):
    """The trainer class for ``model_name``: the plugin's, else RecBole's choice."""
    if model_name in TRAINERS:
        return TRAINERS[model_name]
    return _recbole_get_trainer(model_type, model_name)


def _load_internal_config_dict(config, model, model_class, dataset):
    _recbole_load_internal_config_dict(config, model, model_class, dataset)
    # The plugin Config layers its properties for every model itself; RecBole's own Config gets
    # the plugin's defaults only for the plugin's models, so built-ins behave as without the plugin.
    if model in MODELS and not isinstance(config, Config):
        layer_plugin_properties(config, model, dataset)


def ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without its check-then-create race: the processes of a DDP run
    create ``./log/<model>/`` and the checkpoint folder at the same moment (FileExistsError)."""
    os.makedirs(dir_path, exist_ok=True)


# Every RecBole module that binds ensure_dir by name.
ENSURE_DIR_MODULES = (
    recbole.utils, recbole.utils.utils, recbole.utils.logger, recbole.trainer.trainer,
    recbole.data.utils, recbole.data.dataset.dataset,
)


def register():
    """Make RecBole itself resolve, configure and checkpoint the plugin's models, and run
    distributed on CPUs.

    RecBole binds ``get_model``/``get_trainer`` by name in several modules; each binding is
    replaced (``recbole.quick_start`` too when already imported; imported later, it binds the
    replaced ones from ``recbole.utils``, and importing it here would import ray).
    """
    modules = [recbole.utils, recbole.utils.utils, recbole.config.configurator]
    if "recbole.quick_start.quick_start" in sys.modules:
        modules.append(sys.modules["recbole.quick_start.quick_start"])
    for module in modules:
        if hasattr(module, "get_model"):
            module.get_model = get_model
        if hasattr(module, "get_trainer"):
            module.get_trainer = get_trainer
    RecBoleConfig._load_internal_config_dict = _load_internal_config_dict
    # Distributed runs without CUDA: gloo and the CPU instead of RecBole's nccl and GPUs.
    RecBoleConfig._init_device = init_device
    recbole.trainer.trainer.DistributedDataParallel = distributed_data_parallel
    enable_safe_config_pickling()
    enable_safe_checkpoints()
    # RecBole 1.2.1's collector breaks its own non-accuracy metrics (see get_data_struct).
    Collector.get_data_struct = get_data_struct
    for module in ENSURE_DIR_MODULES:
        module.ensure_dir = ensure_dir
