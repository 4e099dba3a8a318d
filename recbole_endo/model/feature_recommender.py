"""The common frame of the plugin's models: a user tower and an item tower over feature fields,
trained with graded BPR."""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_endo.data.interactions import grade_labels
from recbole_endo.model.losses import LowerGradeSampler, batch_normalised, graded_bpr_loss
from recbole_endo.model.towers import (
    ENTITIES,
    EvaluationCache,
    check_endo_fields,
    every_entity,
    initialise_towers,
    parse_endo_fields,
)
from recbole_endo.options import check_raw_ratings, number_option, numbers_option


class FeatureTowerRecommender(EvaluationCache, GeneralRecommender):
    r"""Scores a user–item pair by the dot product of a user tower and an item tower.

    Subclasses set ``tower_class``, built as ``tower_class(dataset, entity, fields, config)`` for
    each entity. Each tower maps internal ids to vectors,
    reading the fields named in ``endo_fields`` from RecBole's user/item feature tables.

    Ranking loss (shared by the plugin's models, so they compare on one objective): the design's
    graded BPR. A positive's grade is 1 + the number of ``grade_thresholds`` its rating reaches
    (ml-100k: rating >= 3 → 2, else 1); a negative's is 0. Each positive is paired with its
    RecBole-sampled negative and, when ``within_user_weight`` > 0, with one observed training item
    of the same user and a lower grade, drawn uniformly (:class:`LowerGradeSampler`); a pair
    weighs its gain difference (2^grade − 1), a within-user pair ``within_user_weight`` times it
    and times the number of lower-graded items it was drawn from, so that in expectation every
    within-user pair counts once (:func:`graded_bpr_loss`). ``grade_thresholds: []`` gives every
    positive grade 1 (plain BPR); non-empty thresholds need the rating field (``RATING_FIELD``)
    loaded from the .inter file, or the model refuses to build. ``sample_weight: ipw`` multiplies
    each pair by the classic inverse propensity ``popularity(item)^-ipw_eta``, normalised to mean 1
    in the batch.
    """

    input_type = InputType.PAIRWISE
    SAMPLE_WEIGHTS = ("none", "ipw")
    # The towers look features up by id: RecBole need not join them into batches (compat/feature_join.py).
    reads_joined_features = False
    # calculate_loss leaves its components in loss_components: the trainer logs them (recbole_endo.trainer).
    reports_loss_components = True

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model that needs no
        dataset (the towers' included); runs check it before loading any data."""
        check_endo_fields(config)
        cls.tower_class.check_config(config, ENTITIES)
        grade_thresholds = numbers_option(config, "grade_thresholds")
        if grade_thresholds:
            check_raw_ratings(config, "grade_thresholds")
        within_user_weight = number_option(config, "within_user_weight", 0)
        if within_user_weight and not grade_thresholds:
            raise ValueError(
                f"config option 'within_user_weight' is {within_user_weight}, but with grade_thresholds: [] "
                "every observed item has the same grade, so no within-user pair exists: set grade_thresholds "
                "(e.g. [3]) or within_user_weight: 0"
            )
        if config["sample_weight"] not in cls.SAMPLE_WEIGHTS:
            raise ValueError(
                f"config option 'sample_weight' is {config['sample_weight']!r}; "
                f"{cls.__name__} supports {', '.join(cls.SAMPLE_WEIGHTS)}"
            )
        number_option(config, "ipw_eta", 0)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.endo_fields = parse_endo_fields(config, dataset)
        self.towers = nn.ModuleDict(
            {entity: self.tower_class(dataset, entity, self.endo_fields[entity], config) for entity in ENTITIES}
        )
        self.RATING = config["RATING_FIELD"]
        self.grade_thresholds = config["grade_thresholds"]
        if self.grade_thresholds and self.RATING not in dataset.field2type:
            raise ValueError(
                f"config option 'grade_thresholds' {self.grade_thresholds} needs the rating field "
                f"'{self.RATING}' (RATING_FIELD), which the dataset does not load: add it to the .inter "
                "file and load_col['inter'], or set grade_thresholds: [] for binary BPR"
            )
        self.within_user_weight = config["within_user_weight"]
        if self.within_user_weight:
            interactions = dataset.inter_feat
            self.lower_grade_sampler = LowerGradeSampler(
                interactions[self.USER_ID], interactions[self.ITEM_ID],
                grade_labels(interactions[self.RATING], self.grade_thresholds), self.n_users,
            )
        self.sample_weight = config["sample_weight"]
        self.ipw_eta = config["ipw_eta"]
        popularity = torch.ones(self.n_items)  # 1 + training count: items unseen in training stay finite
        for item, count in dataset.item_counter.items():
            popularity[item] += count
        self.register_buffer("item_popularity", popularity, persistent=False)
        self.loss_components = {}
        initialise_towers(self)

    def grades(self, interaction):
        items = interaction[self.ITEM_ID]
        if not self.grade_thresholds:
            return torch.ones_like(items)
        return grade_labels(interaction[self.RATING], self.grade_thresholds)

    def pair_weight(self, interaction):
        """The per-pair weight of the ranking loss (``sample_weight``), or None for none."""
        if self.sample_weight != "ipw":
            return None
        return batch_normalised(self.item_popularity[interaction[self.ITEM_ID]] ** -self.ipw_eta)

    def ranked_items(self, interaction, grades):
        """``(item ids, lower)``: the batch's positives, their sampled negatives and, with
        ``within_user_weight``, one training item of the same user and a lower grade per row
        (:class:`LowerGradeSampler`), concatenated in that order; ``lower``, the drawn items'
        ``(grades, counts)``, or None."""
        items = [interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]]
        if not self.within_user_weight:
            return torch.cat(items), None
        drawn, *lower = self.lower_grade_sampler(interaction[self.USER_ID], grades)
        return torch.cat(items + [drawn]), lower

    def ranking_loss(self, user_repr, item_repr, grades, lower=None, sample_weight=None):
        """Graded BPR of the batch; ``item_repr`` and ``lower``: the representations and the
        lower-graded items' ``(grades, counts)`` of :meth:`ranked_items`."""
        pos_score, neg_score, *lower_score = ((user_repr * part).sum(-1) for part in item_repr.split(len(user_repr)))
        if lower is None:
            return graded_bpr_loss(pos_score, neg_score, grades, sample_weight)
        return graded_bpr_loss(pos_score, neg_score, grades, sample_weight, *lower_score, *lower, self.within_user_weight)

    @staticmethod
    def distinct(ids):
        """``(distinct ids, where each of ids is among them)``.

        A batch repeats popular users and items many times (ml-100k: 2048 pairs hold about 660
        users and, with the negatives, 1450 items): each distinct id goes through its tower once
        and the rows share its output and sum their gradients. With dropout the rows of one id
        share one mask: each row's loss has the distribution it has with a mask of its own, so
        the expected loss and gradient are unchanged, and the work is that of the distinct ids."""
        return torch.unique(ids, return_inverse=True)

    def tower_rows(self, entity, *ids):
        """The ``entity`` tower on each id tensor of ``ids``, each distinct id computed once."""
        distinct, index = self.distinct(torch.cat(ids))
        return self.towers[entity](distinct).index_select(0, index).split([len(part) for part in ids])

    def calculate_loss(self, interaction):
        (user_repr,) = self.tower_rows("user", interaction[self.USER_ID])
        grades = self.grades(interaction)
        items, lower = self.ranked_items(interaction, grades)
        (item_repr,) = self.tower_rows("item", items)
        loss = self.ranking_loss(user_repr, item_repr, grades, lower, self.pair_weight(interaction))
        # Detached tensors, not floats: .item() would wait for the device once per component.
        self.loss_components = {"rank": loss.detach()}
        return loss

    def representations(self, entity, ids):
        """The ``entity`` tower on ``ids``; in eval mode looked up in :meth:`all_representations`."""
        if self.training:
            return self.towers[entity](ids)
        return self.all_representations(entity)[ids]

    def forward(self, user, item):
        return (self.representations("user", user) * self.representations("item", item)).sum(-1)

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def all_representations(self, entity):
        """The ``entity`` tower over every user or item; in eval mode computed once per evaluation
        (:class:`EvaluationCache`), so an evaluation batch costs a lookup."""
        count = self.n_users if entity == "user" else self.n_items
        return self.cached(entity, lambda: every_entity(self.towers[entity], count, self.device))

    def all_item_representations(self):
        """The item tower over every item (see :meth:`all_representations`)."""
        return self.all_representations("item")

    def full_sort_predict(self, interaction):
        user_repr = self.representations("user", interaction[self.USER_ID])
        return (user_repr @ self.all_item_representations().T).reshape(-1)
