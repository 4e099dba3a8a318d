"""The common frame of the plugin's models: a user tower and an item tower over feature fields,
trained with graded BPR."""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType

from recbole_endo.model.losses import batch_normalised, grade_labels, graded_bpr_loss
from recbole_endo.model.options import check_raw_ratings, number_option, numbers_option, sizes_option
from recbole_endo.model.towers import ENTITIES, parse_endo_fields


class FeatureTowerRecommender(GeneralRecommender):
    r"""Scores a user–item pair by the dot product of a user tower and an item tower.

    Subclasses set ``tower_class``, built as ``tower_class(dataset, entity, fields, config)`` for
    each entity. Each tower maps internal ids to vectors,
    reading the fields named in ``endo_fields`` from RecBole's user/item feature tables.

    Ranking loss (shared by the plugin's models, so they compare on one objective): graded BPR
    over (positive, RecBole-sampled negative) pairs. A positive's grade is 1 + the number of
    ``grade_thresholds`` its rating reaches (ml-100k: rating >= 3 → 2, else 1); a negative's is 0;
    a pair weighs its gain difference 2^grade − 1. Without a loaded rating field every positive
    has grade 1 (plain BPR). ``sample_weight: ipw`` multiplies each pair by the classic inverse
    propensity ``popularity(item)^-ipw_eta``, normalised to mean 1 in the batch.
    """

    input_type = InputType.PAIRWISE
    SAMPLE_WEIGHTS = ("none", "ipw")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.endo_fields = parse_endo_fields(config)
        number_option(config, "embedding_size", 1, integer=True)
        sizes_option(config, "mlp_hidden_size")
        number_option(config, "dropout_prob", 0, 1)
        self.towers = nn.ModuleDict(
            {entity: self.tower_class(dataset, entity, self.endo_fields[entity], config) for entity in ENTITIES}
        )
        self.RATING = config["RATING_FIELD"]
        has_rating = self.RATING in dataset.field2type
        thresholds = numbers_option(config, "grade_thresholds")
        self.grade_thresholds = thresholds if has_rating else None
        if self.grade_thresholds:
            check_raw_ratings(config, "grade_thresholds")
        if config["sample_weight"] not in self.SAMPLE_WEIGHTS:
            raise ValueError(
                f"config option 'sample_weight' is {config['sample_weight']!r}; "
                f"{type(self).__name__} supports {', '.join(self.SAMPLE_WEIGHTS)}"
            )
        self.sample_weight = config["sample_weight"]
        self.ipw_eta = number_option(config, "ipw_eta", 0)
        popularity = torch.ones(self.n_items)  # 1 + training count: items unseen in training stay finite
        for item, count in dataset.item_counter.items():
            popularity[item] += count
        self.register_buffer("item_popularity", popularity, persistent=False)
        self.loss_components = {}
        self.apply(xavier_normal_initialization)
        self._item_repr_cache = None

    def train(self, mode=True):
        # RecBole switches modes around every weight change (a training epoch, loading the best
        # checkpoint), so the cached item tower lives exactly as long as one evaluation.
        self._item_repr_cache = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._item_repr_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def grades(self, interaction):
        items = interaction[self.ITEM_ID]
        if self.grade_thresholds is None:
            return torch.ones_like(items)
        return grade_labels(interaction[self.RATING], self.grade_thresholds)

    def pair_weight(self, interaction):
        """The per-pair weight of the ranking loss (``sample_weight``), or None for none."""
        if self.sample_weight != "ipw":
            return None
        return batch_normalised(self.item_popularity[interaction[self.ITEM_ID]] ** -self.ipw_eta)

    def ranking_loss(self, interaction, user_repr, pos_repr, neg_repr, sample_weight=None):
        pos_score = (user_repr * pos_repr).sum(-1)
        neg_score = (user_repr * neg_repr).sum(-1)
        return graded_bpr_loss(pos_score, neg_score, self.grades(interaction), sample_weight)

    def calculate_loss(self, interaction):
        user_repr = self.towers["user"](interaction[self.USER_ID])
        pos_repr = self.towers["item"](interaction[self.ITEM_ID])
        neg_repr = self.towers["item"](interaction[self.NEG_ITEM_ID])
        loss = self.ranking_loss(interaction, user_repr, pos_repr, neg_repr, self.pair_weight(interaction))
        self.loss_components = {"rank": loss.item()}
        return loss

    def forward(self, user, item):
        return (self.towers["user"](user) * self.towers["item"](item)).sum(-1)

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def all_item_representations(self):
        """The item tower over every item; computed once per evaluation (cached in eval mode)."""
        if self.training or self._item_repr_cache is None:
            item_repr = self.towers["item"](torch.arange(self.n_items, device=self.device))
            if self.training:
                return item_repr
            self._item_repr_cache = item_repr
        return self._item_repr_cache

    def full_sort_predict(self, interaction):
        user_repr = self.towers["user"](interaction[self.USER_ID])
        return (user_repr @ self.all_item_representations().T).reshape(-1)
