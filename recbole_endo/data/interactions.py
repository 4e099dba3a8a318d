"""What the plugin reads off a split's interactions, for training and evaluation alike: each
observed interaction's graded relevance (:func:`grade_labels`, the graded ranking loss's and the
sampled list protocol's grades), which users and items the training split holds
(:func:`trained_entities`, the towers' unseen tokens and the cold-start strata), and the training
rows a run trains on (:func:`training_rows`, ``train_min_rating``) beside the whole training split
its evaluation reads (:func:`evaluation_split`)."""

import torch
from recbole.data.utils import get_dataloader
from recbole.utils import ModelType


def grade_labels(ratings, thresholds):
    """Graded relevance of observed interactions: 1 + the number of thresholds ``rating`` reaches
    (the design: rating >= 3 → 2, else 1). Sampled negatives have grade 0."""
    thresholds = torch.as_tensor(thresholds, dtype=ratings.dtype, device=ratings.device)
    return 1 + (ratings.unsqueeze(-1) >= thresholds).sum(-1)


def trained_entities(dataset, entity):
    """Bool per internal id of ``entity``: it has an interaction in ``dataset`` (the training split).
    In a sequential training split an item also trains as a step of the input sequences (a user's
    first item is no row's target)."""
    counter = dataset.user_counter if entity == "user" else dataset.item_counter
    trained = torch.zeros(dataset.user_num if entity == "user" else dataset.item_num, dtype=torch.bool)
    trained[list(counter)] = True
    item_lists = getattr(dataset, "item_id_list_field", None)  # a RecBole SequentialDataset's
    if entity == "item" and item_lists in dataset.inter_feat:
        trained[dataset.inter_feat[item_lists].flatten()] = True
        trained[0] = False  # the sequences' padding; RecBole's padding item was never trained
    return trained


def training_rows(config, train_data):
    """RecBole's training loader ``train_data`` over its rows rated at least ``train_min_rating``
    (the papers' binarised feedback: a pairwise model's positives are the ratings it counts as
    clicks), or ``train_data`` itself when the option is ~. The rows left out stay everywhere else:
    in the negative sampler's exclusions (a left-out item is neither a positive nor a sampled
    negative of its user) and in the split the evaluation reads as history
    (:func:`evaluation_split`); the model is built on the rows kept, so popularity counts them only."""
    threshold = config["train_min_rating"]
    if threshold is None:
        return train_data
    if config["MODEL_TYPE"] in (ModelType.SEQUENTIAL, ModelType.KNOWLEDGE):
        raise ValueError(
            f"config option 'train_min_rating' leaves rows out of a general model's training split; "
            f"{config['model']} is a {config['MODEL_TYPE'].name.lower()} model, whose training data are "
            "sequences or a knowledge graph: set train_min_rating: ~"
        )
    split = train_data._dataset
    rating = config["RATING_FIELD"]
    if rating not in split.inter_feat:
        raise ValueError(
            f"config option 'train_min_rating' compares the rating field '{rating}' (RATING_FIELD), which "
            f"dataset '{config['dataset']}' does not load: add it to load_col's inter fields, or set train_min_rating: ~"
        )
    kept = split.copy(split.inter_feat[split.inter_feat[rating] >= threshold])
    loader = get_dataloader(config, "train")(config, kept, train_data._sampler, shuffle=config["shuffle"])
    loader.whole_split = split
    return loader


def evaluation_split(data):
    """The split a loader's evaluation reads: its dataset, or for a training loader of
    :func:`training_rows` the whole training split (history, exposed pairs, trained entities)."""
    return getattr(data, "whole_split", data._dataset)
