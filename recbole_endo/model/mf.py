"""MF: biased matrix factorisation fitted to the observed ratings, the backbone and naive
baseline of the debiasing papers.

Reference: Yehuda Koren, Robert Bell and Chris Volinsky, "Matrix Factorization Techniques for
Recommender Systems", IEEE Computer 2009 (the biased model); trained as the naive baseline of
Tobias Schnabel et al., "Recommendations as Treatments: Debiasing Learning and Evaluation",
ICML 2016: the mean squared error on the observed ratings, each weighing the same.

``rating_loss`` (shared by MF, MFIPS and MFDR, which inherit it from :class:`MF`): ``squared``
(default) follows Schnabel et al.'s MF-Naive / MF-IPS and Wang et al.'s DR-JL on the ratings;
``bce`` follows the public code of the doubly robust papers on Coat and Yahoo! R3 (e.g.
CrazyDumpling/CDR_CIKM2023 ``baseline/MF.py``, the StableDR code): ratings binarised (rating >=
``binarize_threshold`` → 1, else 0; their ``binarize``: > 3) and the binary cross-entropy of
sigmoid(score) against the label.

:class:`BiasedMF` is the scoring module that MF, MFIPS, MFDR (both of its models) and RelMF share.
"""

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType
from torch import nn

from recbole_endo.options import check_raw_ratings, choice_option, number_option

RATING_LOSSES = ("squared", "bce")


class BiasedMF(nn.Module):
    r"""Scores :math:`p_u \cdot q_i + b_u + b_i + b`: user and item embeddings (RecBole's Xavier
    normal initialisation, as BPR's), user and item biases starting at 0, and the global bias
    ``b`` starting at ``global_bias``."""

    def __init__(self, n_users, n_items, embedding_size, global_bias=0.0):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, embedding_size)
        self.item_embedding = nn.Embedding(n_items, embedding_size)
        self.apply(xavier_normal_initialization)
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.global_bias = nn.Parameter(torch.tensor([float(global_bias)]))

    def forward(self, user, item):
        """Scores of the pairs ``(user[k], item[k])``."""
        dot = (self.user_embedding(user) * self.item_embedding(item)).sum(dim=-1)
        return dot + self.user_bias[user] + self.item_bias[item] + self.global_bias

    def all_items(self, user):
        """Scores of every item for each of ``user``: shape ``(len(user), n_items)``."""
        dot = self.user_embedding(user) @ self.item_embedding.weight.T
        return dot + self.user_bias[user].unsqueeze(1) + self.item_bias.unsqueeze(0) + self.global_bias


def rating_field(config, dataset, model_name):
    """The rating field the model fits (``RATING_FIELD``), or a ValueError when it is not loaded."""
    field = config["RATING_FIELD"]
    if field not in dataset.field2type:
        raise ValueError(
            f"{model_name} fits ratings: it needs the rating field '{field}' (RATING_FIELD) in the .inter "
            "file and in load_col['inter'], and the dataset does not load it"
        )
    return field


def refuse_sampled_negatives(config, model_name):
    """Rating models train on the observed ratings alone: RecBole's point-wise sampler would add
    rows that keep their positive's rating under another item id."""
    sampler = config["train_neg_sample_args"]
    if isinstance(sampler, dict) and sampler.get("distribution") not in (None, "none"):
        raise ValueError(
            f"config option 'train_neg_sample_args' is {sampler!r}, but {model_name} fits the observed "
            "ratings, and a sampled negative row would carry its positive's rating: set "
            "train_neg_sample_args: ~ (the model's file does)"
        )


class MF(GeneralRecommender):
    r"""Biased MF trained on the observed ratings by their mean loss,
    :math:`\frac{1}{|B|} \sum_{(u,i) \in B} \ell(\hat r_{ui}, y_{ui})` over a batch ``B`` of
    training ratings, with the score :math:`\hat r_{ui} = p_u \cdot q_i + b_u + b_i + b`.

    ``rating_loss`` picks :math:`\ell` and the target :math:`y` (:meth:`pair_losses`,
    :meth:`targets`), here and in MFIPS and MFDR, which inherit both:

    - ``squared`` (default): :math:`y = r_{ui}`, :math:`\ell = (y - \hat r)^2`, the mean squared
      error of Schnabel et al.; the global bias starts at the mean training rating.
    - ``bce``: :math:`y = [r_{ui} \ge` ``binarize_threshold`` :math:`]` and
      :math:`\ell = -[y \log \sigma(\hat r) + (1 - y) \log(1 - \sigma(\hat r))]`, the binary
      cross-entropy on the sigmoid of the score of the doubly robust papers' code (their
      ``binarize`` makes rating > 3 a 1, i.e. >= 4 on Coat's and Yahoo! R3's integer ratings); the
      global bias starts at the log-odds of the training ratings' share of 1s (as the mean rating
      for ``squared``, the constant that minimises the loss).

    Point-wise on RecBole's training rows, with the rating (``RATING_FIELD``) as the source of the
    target (neither ``LABEL_FIELD`` nor ``threshold``) and no sampled negatives
    (``train_neg_sample_args: ~``). Regularisation is RecBole's ``weight_decay`` (Adam's L2 term),
    as BPR's. Items are ranked by score: the predicted rating, or with ``bce`` the logit, whose
    order the sigmoid keeps. Options: ``recbole_endo/properties/model/MF.yaml``.
    """

    input_type = InputType.POINTWISE
    reads_joined_features = False

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model that needs no
        dataset; runs check it before loading any data. The rating field is checked with the
        dataset, when the model is built."""
        refuse_sampled_negatives(config, cls.__name__)
        number_option(config, "embedding_size", 1, integer=True)
        if choice_option(config, "rating_loss", RATING_LOSSES) == "bce":
            number_option(config, "binarize_threshold")
            check_raw_ratings(config, "binarize_threshold")

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.RATING = rating_field(config, dataset, type(self).__name__)
        self.embedding_size = config["embedding_size"]
        self.rating_loss = config["rating_loss"]
        self.binarize_threshold = config["binarize_threshold"] if self.rating_loss == "bce" else None
        self.initial_bias = self.constant_fit(dataset.inter_feat[self.RATING])
        self.mf = BiasedMF(self.n_users, self.n_items, self.embedding_size, self.initial_bias)

    def constant_fit(self, ratings):
        """The constant score that minimises the loss on ``ratings``, where the global biases start:
        the mean rating (squared), the log-odds of the share of 1s (bce; clamped off 0 and 1)."""
        targets = self.targets(ratings).double()
        if self.rating_loss == "squared":
            return float(targets.mean())
        share = min(max(float(targets.mean()), 1e-3), 1 - 1e-3)
        return math.log(share / (1 - share))

    def targets(self, ratings):
        """The training targets y of ``ratings``: the ratings (squared), 0/1 labels (bce)."""
        ratings = ratings.float()
        if self.rating_loss == "bce":
            return (ratings >= self.binarize_threshold).float()
        return ratings

    def as_target(self, score):
        """What a score predicts, as a target of :meth:`pair_losses`: the rating itself (squared),
        the probability sigmoid(score) (bce); MFDR's imputed targets."""
        return torch.sigmoid(score) if self.rating_loss == "bce" else score

    def pair_losses(self, score, target):
        """Per-pair loss of ``score`` against ``target``: (target - score)^2 (squared), the binary
        cross-entropy of sigmoid(score) against ``target`` in [0, 1] (bce)."""
        if self.rating_loss == "bce":
            return F.binary_cross_entropy_with_logits(score, target, reduction="none")
        return (score - target) ** 2

    def forward(self, user, item):
        return self.mf(user, item)

    def errors(self, interaction):
        """The loss of each of the batch's pairs, e_ui = pair_losses(r̂_ui, y_ui)."""
        prediction = self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])
        return self.pair_losses(prediction, self.targets(interaction[self.RATING]))

    def calculate_loss(self, interaction):
        return self.errors(interaction).mean()

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.mf.all_items(interaction[self.USER_ID]).view(-1)
