"""What the plugin reads off a split's interactions, for training and evaluation alike: each
observed interaction's graded relevance (:func:`grade_labels`, the graded ranking loss's and the
sampled list protocol's grades) and which users and items the training split holds
(:func:`trained_entities`, the towers' unseen tokens and the cold-start strata)."""

import torch


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
