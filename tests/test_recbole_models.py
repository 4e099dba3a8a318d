"""Every RecBole 1.2.1 model runs through the plugin's runner on the tiny data: one epoch, its
best checkpoint saved, tested after a reload with the safe loader, and reloaded again through
``load_data_and_model`` with the same test result. Models that cannot run on the tiny data for a
reason outside the plugin are listed with it (and the reason is checked)."""

import pytest

from recbole_endo.quick_start import load_data_and_model, run_recbole_endo
from recbole_endo.registry import recbole_models
from recbole_endo.trainer import get_trainer

# Options a model needs on the tiny data (40 users, 60 items, embedding_size 8), each for a reason
# of RecBole's, not the plugin's.
MODEL_OPTIONS = {
    # Its CNN's default kernels need an embedding map of at least 64 x 64.
    "ConvNCF": {"embedding_size": 64},
    # The reranker partition holds 100 candidate items by default; the tiny data has 60.
    "GRU4RecCPR": {"reranker_CAN_NUM": 20},
    "SASRecCPR": {"reranker_CAN_NUM": 20},
    # Pre-training runs pretrain_epochs (500) whatever epochs says, saving every save_step (10).
    "S3Rec": {"pretrain_epochs": 1, "save_step": 1},
    # RecBole 1.2.1's DSSM sizes its MLP for every float field but embeds only numerical_features.
    "DSSM": {"numerical_features": ["price"]},
    # Its prototype k-means asks faiss for 1,000 clusters; the tiny data has 41 users.
    "NCL": {"num_clusters": 8},
}
# Models that need what the tiny data does not have: (error type, message pattern, reason).
CANNOT_RUN = {
    "GRU4RecKG": (ValueError, r"tiny\.ent\] not found", "needs a pre-trained entity embedding file (.ent)"),
    "KSR": (ValueError, r"tiny\.ent\] not found", "needs a pre-trained entity embedding file (.ent)"),
}
KNOWLEDGE_GRAPH = (ValueError, r"\[tiny\.kg\] not found", "needs a knowledge-graph file (.kg, .link)")
# Models whose scores draw random numbers at evaluation: a reload cannot reproduce their metrics.
RANDOM_SCORES = {"Random"}
# The plugin layers the sequential protocol (leave-one-out, time order; CE without sampled
# negatives) itself; the tiny data's users have at most 10 earlier items.
SEQUENTIAL_PROTOCOL = {"MAX_ITEM_LIST_LENGTH": 10}
# Context-aware models train on a label: RecBole's context-model set-up (rating >= 4, no sampled negatives).
CONTEXT_PROTOCOL = {"threshold": {"rating": 4}, "train_neg_sample_args": None}


def model_options(package, name):
    options = {"epochs": 1, **MODEL_OPTIONS.get(name, {})}
    if package == "sequential_recommender":
        options.update(SEQUENTIAL_PROTOCOL)
    if package == "context_aware_recommender":
        options.update(CONTEXT_PROTOCOL)
    return options


def test_the_sweep_covers_every_recbole_model():
    models = recbole_models()
    assert len(models) == 92 and ("general_recommender", "EASE") in models and ("sequential_recommender", "SASRecF") in models


@pytest.mark.slow
@pytest.mark.parametrize("package, name", recbole_models(), ids=lambda value: value.split("_")[0])
def test_recbole_model_runs_and_reloads_through_the_plugin(package, name, tiny):
    tiny["config_dict"].update(model_options(package, name))
    cannot_run = KNOWLEDGE_GRAPH if package == "knowledge_aware_recommender" else CANNOT_RUN.get(name)
    if cannot_run:
        error, pattern, reason = cannot_run
        with pytest.raises(error, match=pattern):
            run_recbole_endo(model=name, **tiny)
        pytest.xfail(reason)
    result = run_recbole_endo(model=name, **tiny)
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    reloaded = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test_data, load_best_model=False)
    if name not in RANDOM_SCORES:
        assert dict(reloaded) == dict(result["test_result"])
