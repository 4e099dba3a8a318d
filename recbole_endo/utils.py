"""Model and trainer lookup: the plugin's classes first, then RecBole's built-ins.

:func:`register` registers the plugin's models and trainers with RecBole's own ``get_model`` /
``get_trainer`` / ``Config``, so RecBole's ``run_recbole`` and ``load_data_and_model`` work with
the plugin's models, and changes nothing for RecBole's models.
"""

import importlib
import sys

import recbole.config.configurator
import recbole.utils
import recbole.utils.utils
import torch
from recbole.config import Config as RecBoleConfig
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_endo.config import CONFIG_ENUMS, Config, layer_plugin_properties, restore_config
from recbole_endo.model import MODELS
from recbole_endo.trainer import TRAINERS, plugin_trainer

_recbole_get_model = recbole.utils.utils.get_model
_recbole_get_trainer = recbole.utils.utils.get_trainer
_recbole_load_internal_config_dict = RecBoleConfig._load_internal_config_dict

RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


def recbole_models():
    """``(package, name)`` of RecBole's built-in models (those importable here), by package."""
    models = []
    for package in RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        models += [
            (package, name)
            for name, obj in sorted(vars(module).items())
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender)
        ]
    return models


def recbole_model_names():
    """Names of RecBole's built-in models (those importable here)."""
    return sorted({name for _, name in recbole_models()})


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


def registered_trainer(model_type, model_name):
    """The trainer RecBole uses for ``model_name`` once the plugin is registered: the plugin's
    for its models, else RecBole's own choice, unchanged."""
    if model_name in TRAINERS:
        return TRAINERS[model_name]
    return _recbole_get_trainer(model_type, model_name)


def get_trainer(model_type, model_name):
    """The trainer class of the plugin's runs for ``model_name``: the plugin's, else RecBole's
    choice with the plugin's checkpoints (:func:`recbole_endo.trainer.plugin_trainer`)."""
    return plugin_trainer(registered_trainer(model_type, model_name))


def _load_internal_config_dict(config, model, model_class, dataset):
    _recbole_load_internal_config_dict(config, model, model_class, dataset)
    # The plugin Config layers its properties for every model itself; RecBole's own Config gets
    # the plugin's defaults only for the plugin's models, so built-ins behave as without the plugin.
    if model in MODELS and not isinstance(config, Config):
        layer_plugin_properties(config, model, dataset)


def register():
    """Register the plugin's models and trainers with RecBole, and its checkpoints' config with
    torch's safe loader; nothing else of RecBole changes (what the plugin's own runs change is
    scoped to them, ``recbole_endo.run_scope``).

    RecBole binds ``get_model``/``get_trainer`` by name in several modules; each binding is
    replaced by a lookup that finds the plugin's models and otherwise returns what RecBole's
    returns (``recbole.quick_start`` too when already imported; imported later, it binds the
    replaced ones from ``recbole.utils``, and importing it here would import ray).
    """
    modules = [recbole.utils, recbole.utils.utils, recbole.config.configurator]
    if "recbole.quick_start.quick_start" in sys.modules:
        modules.append(sys.modules["recbole.quick_start.quick_start"])
    for module in modules:
        if hasattr(module, "get_model"):
            module.get_model = get_model
        if hasattr(module, "get_trainer"):
            module.get_trainer = registered_trainer
    RecBoleConfig._load_internal_config_dict = _load_internal_config_dict
    # RecBole's load_data_and_model reads a plugin model's checkpoint with torch's default safe
    # loader: the config's rebuilder and the RecBole enums in it must be readable.
    torch.serialization.add_safe_globals([restore_config, *CONFIG_ENUMS])
