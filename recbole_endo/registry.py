"""Model lookup by name, shared by the run path and RecBole's registration: the plugin's models
first, then RecBole's built-ins."""

import importlib

import recbole.utils.utils
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_endo.model import MODELS

_recbole_get_model = recbole.utils.utils.get_model

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
