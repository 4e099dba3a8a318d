"""Registration with RecBole: :func:`register`, the one place that tells RecBole about the plugin,
makes RecBole's own ``get_model`` / ``get_trainer`` / ``Config`` find the plugin's models and
trainers and its evaluator find the plugin's metrics, so RecBole's ``run_recbole`` and
``load_data_and_model`` work with them, and changes nothing for RecBole's models.

RecBole 1.2.1 has no plugin interface: it finds a model by importing ``recbole.model.<package>``
modules (``get_model``), a trainer in ``recbole.trainer`` (``get_trainer``), a model's defaults in
its own ``properties`` folder (``Config._load_internal_config_dict``) and a metric in the
dictionaries of ``recbole.evaluator.register``; each is extended here, not edited.
"""

import sys

import recbole.config.configurator
import recbole.utils
import recbole.utils.utils
import torch
from recbole.config import Config as RecBoleConfig
from recbole.evaluator import register as metric_registry

from recbole_endo.config import CONFIG_ENUMS, Config, layer_plugin_properties, restore_config
from recbole_endo.evaluation.metrics import GradedNDCG, ListAUC
from recbole_endo.model import MODELS
from recbole_endo.registry import get_model
from recbole_endo.trainer import registered_trainer

_recbole_load_internal_config_dict = RecBoleConfig._load_internal_config_dict


def _load_internal_config_dict(config, model, model_class, dataset):
    _recbole_load_internal_config_dict(config, model, model_class, dataset)
    # The plugin Config layers its properties for every model itself; RecBole's own Config gets
    # the plugin's defaults only for the plugin's models, so built-ins behave as without the plugin.
    if model in MODELS and not isinstance(config, Config):
        layer_plugin_properties(config, model, model_class, dataset)


def register_metric(metric_class):
    """Make ``metric_class`` available to RecBole by name, as its own metrics are, without
    editing RecBole: its registry dictionaries are shared by every module that imported them."""
    name = metric_class.__name__.lower()
    metric_registry.metrics_dict[name] = metric_class
    metric_registry.metric_information[name] = metric_class.metric_need
    metric_registry.metric_types[name] = metric_class.metric_type
    if metric_class.smaller and name not in metric_registry.smaller_metrics:
        metric_registry.smaller_metrics.append(name)


def register():
    """Register the plugin's models, trainers and metrics with RecBole, and its checkpoints'
    config with torch's safe loader; nothing else of RecBole changes (what the plugin's own runs
    change is scoped to them, ``recbole_endo.compat.run_scope``).

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
    register_metric(GradedNDCG)
    register_metric(ListAUC)
    # RecBole's load_data_and_model reads a plugin model's checkpoint with torch's default safe
    # loader: the config's rebuilder and the RecBole enums in it must be readable.
    torch.serialization.add_safe_globals([restore_config, *CONFIG_ENUMS])
