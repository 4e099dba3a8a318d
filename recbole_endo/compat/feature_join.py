"""Fast paths around RecBole's data pipeline, for models that read features by id.

RecBole's dataloaders ``join`` every user and item feature column into each batch: training
batches (``Dataset.__getitem__``), the sampled negatives' item features (pairwise sampling adds
``neg_<field>`` columns), the rows of the sampled and full-ranking evaluation loaders. Context
models (FM and its kin) embed those columns; the plugin's towers do not read them (they look the
features up by internal id in tables held on the model's device), and RecBole's general
recommenders (BPR, LightGCN, ...) read nothing but ids, ratings and labels from a batch. For
those models the join is pure cost: on ml-100k with the plugin's feature columns loaded it is
about half of a BPR training epoch.

``join_features`` (config) decides:

- ``auto`` (default): skip the join for models that do not read joined features: a model class
  declaring ``reads_joined_features = False`` (the plugin's), and RecBole's built-in general
  recommenders (``recbole.model.general_recommender``). Every other model (context-aware,
  sequential, knowledge-aware, a user's own) keeps RecBole's join.
- ``True``: always join, exactly as RecBole does.

Skipping the join changes nothing a model computes: the batches are the same interactions,
shuffled and negative-sampled with the same random draws, minus columns the model never reads.
"""

from recbole.data.interaction import Interaction

JOIN_OPTION = "join_features"
GENERAL_RECOMMENDERS = "recbole.model.general_recommender."


def reads_joined_features(model_class):
    """Whether ``model_class`` reads user/item feature columns from its batches.

    A class states it with ``reads_joined_features``; otherwise only RecBole's general
    recommenders are known not to (they read ids, ratings and labels only)."""
    declared = getattr(model_class, "reads_joined_features", None)
    if declared is not None:
        return bool(declared)
    return not model_class.__module__.startswith(GENERAL_RECOMMENDERS)


def join_option(config):
    """``config['join_features']``, checked: ``"auto"`` or ``True``; unset (RecBole's own Config)
    means ``auto``."""
    value = config[JOIN_OPTION]
    text = value.lower() if isinstance(value, str) else None
    if value is None or text == "auto":
        return "auto"
    if value is True or text == "true":
        return True
    raise ValueError(f"config option '{JOIN_OPTION}' must be auto or true, got {value!r}")


def without_features(interaction):
    """``Dataset.join`` for models that read no joined features: the batch as it is."""
    return interaction


def skip_feature_join(config, model_class, loaders):
    """Stop ``loaders`` (RecBole's train/valid/test dataloaders) from joining user and item
    features into their batches, when ``join_features`` and ``model_class`` allow it.

    Each loader's split dataset gets :func:`without_features` as its ``join`` (the feature tables
    themselves, which the towers read through ``get_user_feature``/``get_item_feature``, are
    untouched), and a full-ranking loader's user table, joined once when RecBole built it, is cut
    down to the user ids.

    Returns:
        bool: whether the join was skipped.
    """
    if join_option(config) is True or reads_joined_features(model_class):
        return False
    for loader in loaders:
        if loader is None:
            continue
        loader._dataset.join = without_features
        user_df = getattr(loader, "user_df", None)  # FullSortEvalDataLoader (not sequential)
        if isinstance(user_df, Interaction):
            uid_field = loader._dataset.uid_field
            loader.user_df = Interaction({uid_field: user_df[uid_field]})
    return True
