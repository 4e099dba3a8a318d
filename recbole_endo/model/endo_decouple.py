r"""EndoDecouple
################################################
The design's endogenous decoupling: TwoTowerSplit's towers, whose side and atom representations
are shaped by a truncated-cosine stage-1 loss, InfoNCE on the side representation and on the atom
part orthogonal to it (fake negatives masked), ranked with graded BPR (docs/model.md).

Reference:
    The plugin's design log (endogenous decoupling of side and atom representations; unpublished).
    Two-tower self-supervision with feature-masking views follows Tiansheng Yao et al.
    "Self-supervised Learning for Large-scale Item Recommendations." in CIKM 2021; InfoNCE is
    Aaron van den Oord et al. "Representation Learning with Contrastive Predictive Coding." 2018;
    BPR is Steffen Rendle et al. "BPR: Bayesian Personalized Ranking from Implicit Feedback." in UAI 2009.
"""

import torch

from recbole_endo.model.decoupling import DecouplingTerms
from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.losses import batch_normalised
from recbole_endo.model.towers import EndoTower
from recbole_endo.options import number_option


class EndoDecouple(FeatureTowerRecommender):
    r"""Endogenous decoupling: side and atom representations learned apart, combined for ranking.

    Both towers (user and item alike) are :class:`EndoTower` s trained with the design's
    decoupling terms (:class:`DecouplingTerms`: stage-1, side SSL, atom-orthogonal SSL), computed
    on the batch's users and positive items, plus graded BPR as in :class:`FeatureTowerRecommender`
    (with ``within_user_weight``, its within-user pairs too) on the towers' ranking
    representations (``rank_representation``: the output layer over both branches, or
    ``α (s + γ a⊥)``); score = dot product.

    A tower without a side (or an atom) field, such as the item tower of a dataset without an
    ``.item`` file, has nothing to decouple: its decoupling terms are off, and the log says so.

    Under DDP the SSL terms' in-batch negatives are per process, not gathered: each process takes
    them from its own ``train_batch_size / world_size`` rows, so an anchor has
    ``min(ssl_batch_size, train_batch_size / world_size) − 1`` negatives (with the defaults,
    2048 / 2 ≥ 512, the same 511 as in one process, and the SSL terms cover ``world_size`` times
    more rows per step).

    ``sample_weight: endo`` replaces inverse-propensity weights by ``exp(−endo_eta · cos(a, s))`` of
    the positive item, gradient stopped, normalised to mean 1 in the batch. Why this map: the design
    found that frequent atoms pull their side representation towards themselves, so a high
    ``cos(a, s)`` marks an over-exposed atom, as high popularity does for IPW; a decreasing,
    positive, bounded map (ratio at most ``e^(2·endo_eta)``) mirrors IPW's ``popularity^−η``
    without IPW's exploding weights for rare items.

    Unseen atoms: as in :class:`TwoTowerSplit`, a cold item's id and unseen title words enter the
    atom branch as their field's mean trained embedding, so cold items differ by their side
    representation and known title words, the parts the SSL terms train to generalise. Its
    ranking representation is not the side one alone because the output layer combines both.
    """

    SAMPLE_WEIGHTS = ("none", "ipw", "endo")
    tower_class = EndoTower

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        DecouplingTerms.check_config(config)
        number_option(config, "endo_eta", 0)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.decoupling = DecouplingTerms(config)
        self.endo_eta = config["endo_eta"]
        if self.sample_weight == "endo" and not self.towers["item"].decoupled:
            raise ValueError(
                "config option 'sample_weight' endo weighs items by cos(atom, side), but endo_fields.item "
                "lacks an atom or a side field: name both, or use sample_weight none or ipw"
            )

    def auxiliary(self, entity, ids, other_ids=None):
        """``(representation, terms)``: the tower's ranking representation, and its
        :class:`~recbole_endo.model.decoupling.TowerTerms` (:meth:`DecouplingTerms.tower_terms`),
        or None for a tower that is not ``decoupled``.

        The representation covers ``ids`` and then ``other_ids`` (the negative items) when given;
        the rest covers ``ids`` only. Each distinct id runs through the tower once (:meth:`distinct`).
        """
        parts = (ids,) if other_ids is None else (ids, other_ids)
        if not self.towers[entity].decoupled:
            return torch.cat(self.tower_rows(entity, *parts)), None
        distinct, index = self.distinct(torch.cat(parts))
        representation, terms = self.decoupling.tower_terms(self.towers[entity], distinct, index[: len(ids)])
        return representation.index_select(0, index), terms

    def calculate_loss(self, interaction):
        user_repr, user_terms = self.auxiliary("user", interaction[self.USER_ID])
        grades = self.grades(interaction)
        items, lower = self.ranked_items(interaction, grades)
        count = len(grades)  # the positives come first; the auxiliary terms cover them only
        item_repr, item_terms = self.auxiliary("item", items[:count], items[count:])
        if self.sample_weight == "endo":
            weight = batch_normalised(torch.exp(-self.endo_eta * item_terms.cos))
        else:
            weight = self.pair_weight(interaction)
        rank = self.ranking_loss(user_repr, item_repr, grades, lower, weight)
        terms = {entity: terms for entity, terms in (("user", user_terms), ("item", item_terms)) if terms}
        total, self.loss_components = self.decoupling.total(rank, terms)
        return total
