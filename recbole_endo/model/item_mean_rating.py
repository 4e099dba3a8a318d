"""ItemMeanRating: the item-mean-rating floor.

Reference: the non-personalised "item average" baseline of rating prediction (e.g. Koren, Bell
and Volinsky, "Matrix factorization techniques for recommender systems", IEEE Computer 2009,
§ "Adding biases"), with the item's mean shrunk towards the global mean as a Bayesian average.
"""

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_endo.options import number_option


class ItemMeanRating(GeneralRecommender):
    r"""Scores every item, for every user, by its mean training rating, shrunk towards the global
    mean: :math:`(\sum_u r_{ui} + k \mu) / (n_i + k)` with ``k = mean_rating_prior``. An item
    without a training rating scores the global mean ``μ``.

    It needs no training (RecBole's traditional trainer runs one pass of a zero loss). It is the
    floor a model must beat on tests that rank items a user has rated by their rating (Coat's
    randomly exposed test, graded lists): knowing nothing of the user, it knows which items are
    liked. The shrinkage keeps an item with one 5-star rating from outranking one with a hundred
    4.5-star ratings. Min-max normalised ratings rank the same: the score is affine in them.
    """

    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    reads_joined_features = False

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad ``mean_rating_prior``; runs check it
        before loading any data. The rating field is checked with the dataset."""
        number_option(config, "mean_rating_prior", 0)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        rating_field = config["RATING_FIELD"]
        if rating_field not in dataset.field2type:
            raise ValueError(
                f"ItemMeanRating needs the rating field '{rating_field}' (RATING_FIELD) in the .inter file "
                "and in load_col['inter']: the dataset does not load it"
            )
        prior = config["mean_rating_prior"]
        items = dataset.inter_feat[self.ITEM_ID]
        ratings = dataset.inter_feat[rating_field].double()
        sums = torch.zeros(self.n_items, dtype=torch.float64).index_add_(0, items, ratings)
        counts = torch.bincount(items, minlength=self.n_items).double()
        mean = ratings.mean()
        # An unrated item with prior 0 would divide 0 by 0: it scores the global mean instead.
        scores = torch.where(counts + prior > 0, (sums + prior * mean) / (counts + prior).clamp(min=1e-12), mean)
        self.register_buffer("item_score", scores.float())
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))  # RecBole's optimiser needs a parameter

    def calculate_loss(self, interaction):
        return self.fake_loss.sum() * 0

    def predict(self, interaction):
        return self.item_score[interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        return self.item_score.repeat(len(interaction[self.USER_ID]))
