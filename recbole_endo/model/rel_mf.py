"""RelMF: matrix factorisation trained on the unbiased point-wise loss of implicit feedback.

Reference: Yuta Saito, Suguru Yaginuma, Yuta Nishino, Hayato Sakata and Kazuhide Nakata,
"Unbiased Recommender Learning from Missing-Not-At-Random Implicit Feedback", WSDM 2020 (Rel-MF).
"""

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_endo.model.mf import BiasedMF, rating_field
from recbole_endo.model.propensity import (
    check_propensity_options,
    item_counts,
    propensity_from_config,
    relative_popularity_propensity,
)
from recbole_endo.options import check_raw_ratings, number_option


class RelMF(GeneralRecommender):
    r"""Biased MF scoring :math:`s_{ui}`, the relevance estimate :math:`\sigma(s_{ui})`, trained on
    the paper's unbiased log loss over clicks and non-clicks:

    .. math:: \ell_{ui} = -\left[ \frac{Y_{ui}}{\theta_{ui}} \log \sigma(s_{ui})
              + \left(1 - \frac{Y_{ui}}{\theta_{ui}}\right) \log\left(1 - \sigma(s_{ui})\right) \right]

    whose expectation over exposure is the log loss against the relevance :math:`R_{ui}` when
    :math:`Y = O \cdot R` and :math:`\theta = P(O = 1)`. (The authors' real-data code trains the
    squared-loss variant, :math:`(Y/\theta)(1 - \sigma)^2 + (1 - Y/\theta)\sigma^2`.)

    Clicks and non-clicks: point-wise with RecBole's negative sampler
    (``train_neg_sample_args``, by default one uniform negative per training row, as the
    authors' code draws as many unlabelled pairs as clicks per batch): a training row has
    ``LABEL_FIELD`` 1, a sampled pair (an item the user has no training row with) 0. A row is a
    click when its label is 1 and, with ``click_threshold`` set, its rating is at least the
    threshold (Saito et al. click at rating >= 4 on Coat and Yahoo! R3; rows below are non-clicks).
    The loss is the batch mean: the batch holds the sampler's share of non-clicks, not the whole
    matrix's (the paper's 1/|D| sum), which weighs the non-click term by a constant.

    Propensities :math:`\theta` (``propensity``): ``popularity`` (default) the paper's
    :math:`(n_i / \max_j n_j)^{\eta}`, n_i the item's training clicks, ``propensity_eta`` 0.5;
    ``file`` a dataset's own matrix; ``naive_bayes`` P(O=1 | r) by the click's rating, from all
    training ratings and the dataset's uniform slice (:mod:`recbole_endo.model.propensity`; it
    needs the rating field). Clipping:
    :math:`\max(\theta, M)` with ``propensity_clip`` M = 0.1 by default, so no click weighs more
    than 10 (the paper's clipped estimator; 0 = unclipped). A click's :math:`1/\theta > 1` makes
    its loss unbounded below in :math:`s`; the non-clicks and ``weight_decay`` bound the sum.
    Scores rank as relevance: ``predict`` and ``full_sort_predict`` return :math:`s_{ui}`.
    Options: ``recbole_endo/properties/model/RelMF.yaml``.
    """

    input_type = InputType.POINTWISE
    reads_joined_features = False

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model that needs no
        dataset; runs check it before loading any data. The rating field ``click_threshold``
        compares is checked with the dataset, when the model is built."""
        sampler = config["train_neg_sample_args"]
        if not isinstance(sampler, dict) or sampler.get("distribution") in (None, "none"):
            raise ValueError(
                f"config option 'train_neg_sample_args' is {sampler!r}, but {cls.__name__} trains on clicks and "
                "sampled non-clicks: give a distribution, e.g. {distribution: uniform, sample_num: 1} "
                "(the model's file does)"
            )
        if config["click_threshold"] is not None:
            number_option(config, "click_threshold")
            check_raw_ratings(config, "click_threshold")
        number_option(config, "propensity_eta", 0)
        check_propensity_options(config, cls.__name__)
        number_option(config, "embedding_size", 1, integer=True)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]
        self.click_threshold = config["click_threshold"]
        items = dataset.inter_feat[self.ITEM_ID]
        clicked = torch.ones(len(items), dtype=torch.bool)
        self.RATING = None
        if self.click_threshold is not None:
            self.RATING = rating_field(config, dataset, f"{type(self).__name__} with 'click_threshold'")
            clicked = dataset.inter_feat[self.RATING] >= self.click_threshold
        elif config["propensity"] == "naive_bayes":
            self.RATING = rating_field(config, dataset, f"{type(self).__name__} with propensity naive_bayes")
        eta = config["propensity_eta"]
        self.propensity = propensity_from_config(
            config, dataset, lambda: relative_popularity_propensity(item_counts(items[clicked], self.n_items), eta)
        )
        self.embedding_size = config["embedding_size"]
        self.mf = BiasedMF(self.n_users, self.n_items, self.embedding_size)

    def forward(self, user, item):
        return self.mf(user, item)

    def clicks(self, interaction):
        """Y_ui of the batch's rows: 1 for a click, 0 for a non-click (sampled, or rated below the threshold)."""
        clicks = interaction[self.LABEL].float()
        if self.click_threshold is not None:
            clicks = clicks * (interaction[self.RATING] >= self.click_threshold).float()
        return clicks

    def calculate_loss(self, interaction):
        user, item = interaction[self.USER_ID], interaction[self.ITEM_ID]
        score = self.forward(user, item)
        clicks = self.clicks(interaction)
        # Y / theta, 0 for a non-click whatever theta (an item never clicked has theta 0).
        rating = None if self.RATING is None else interaction[self.RATING]
        theta = self.propensity(user, item, rating).clamp(min=1e-12)
        weight = torch.where(clicks > 0, clicks / theta, torch.zeros_like(clicks))
        # -log sigma(s) = softplus(-s), -log(1 - sigma(s)) = softplus(s)
        return (weight * F.softplus(-score) + (1 - weight) * F.softplus(score)).mean()

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.mf.all_items(interaction[self.USER_ID]).view(-1)
