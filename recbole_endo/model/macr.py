r"""MACR
################################################
Model-agnostic counterfactual reasoning against popularity bias: a matching model (here matrix
factorisation) fused with an item module and a user module, trained together, and ranked by the
fused score minus its counterfactual part, the score the item and user alone would give.

Reference:
    Tianxin Wei et al. "Model-Agnostic Counterfactual Reasoning for Eliminating Popularity Bias
    in Recommender System." in KDD 2021.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType

from recbole_endo.options import choice_option, number_option, sizes_option


def module(input_size, hidden_sizes):
    """A user or item module: an MLP (ReLU) over the embedding with hidden layers ``hidden_sizes``
    and one output, the last layer without bias; ``[]``: a linear map, as the official code."""
    layers, size = [], input_size
    for hidden in hidden_sizes:
        layers += [nn.Linear(size, hidden), nn.ReLU()]
        size = hidden
    layers.append(nn.Linear(size, 1, bias=False))
    return nn.Sequential(*layers)


class MACR(GeneralRecommender):
    r"""MACR on matrix factorisation: the matching score ``ŷ_k = <u, i>``, the item module
    ``ŷ_i = N_I(i)`` and the user module ``ŷ_u = N_U(u)`` on the same id embeddings, fused as
    :math:`\hat y_{ui} = \hat y_k \cdot \sigma(\hat y_i) \cdot \sigma(\hat y_u)`.

    Training on RecBole's (u, i, j) triples, the positive labelled 1 and the sampled negative 0
    (``fusion_loss``):

    - ``bce`` (default, the paper's): :math:`L = L_O + \alpha L_I + \beta L_U`, each a binary
      cross-entropy averaged over the batch's positive and negative rows: :math:`L_O` on
      :math:`\sigma(\hat y_{ui})`, :math:`L_I` on :math:`\sigma(\hat y_i)`, :math:`L_U` on
      :math:`\sigma(\hat y_u)`. With one negative per positive every user has as many 1s as 0s,
      so :math:`L_U` alone pulls :math:`\sigma(\hat y_u)` to 1/2 (as in the official code);
      the user module learns its spread through :math:`L_O`.
    - ``bpr``: :math:`L_O` and :math:`L_I` become BPR on the fused and on the item-module
      scores (positive over negative); a pair has one user, so :math:`L_U` stays the BCE above.

    ``α = item_loss_weight``, ``β = user_loss_weight`` (the paper's code: 1e-3 each).

    Inference, the counterfactual subtraction (total effect minus the natural direct effect of
    the item and the user):
    :math:`\hat y_k \sigma(\hat y_i) \sigma(\hat y_u) - c\, \sigma(\hat y_i) \sigma(\hat y_u)`,
    ``c = counterfactual_c``. The paper tunes c on validation for a trained model; here it is an
    option, so a search over it retrains per value. Its default, 0, ranks by the fused training
    score: c is on the scale of ``ŷ_k``, which on Coat after 100 epochs spans about −2 to 2 (the
    official code's default, 10, fits larger data), so no fixed value is neutral; tune it.
    """

    input_type = InputType.PAIRWISE
    reads_joined_features = False

    FUSION_LOSSES = ("bce", "bpr")

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model; runs check it
        before loading any data."""
        number_option(config, "embedding_size", 1, integer=True)
        sizes_option(config, "module_hidden_size", allow_empty=True)
        number_option(config, "item_loss_weight", 0)
        number_option(config, "user_loss_weight", 0)
        number_option(config, "counterfactual_c")
        choice_option(config, "fusion_loss", cls.FUSION_LOSSES)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        hidden = config["module_hidden_size"]
        self.item_loss_weight = config["item_loss_weight"]
        self.user_loss_weight = config["user_loss_weight"]
        self.c = config["counterfactual_c"]
        self.fusion_loss = config["fusion_loss"]

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        self.user_module = module(self.embedding_size, hidden)
        self.item_module = module(self.embedding_size, hidden)
        self.apply(xavier_normal_initialization)

    def branches(self, user, item):
        """``(ŷ_k, ŷ_i, ŷ_u)`` of the pairs ``(user, item)``: logits, before any sigmoid."""
        user_e, item_e = self.user_embedding(user), self.item_embedding(item)
        matching = (user_e * item_e).sum(dim=1)
        return matching, self.item_module(item_e).squeeze(-1), self.user_module(user_e).squeeze(-1)

    @staticmethod
    def fused(matching, item_logit, user_logit):
        return matching * torch.sigmoid(item_logit) * torch.sigmoid(user_logit)

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        pos_k, pos_i, pos_u = self.branches(user, interaction[self.ITEM_ID])
        neg_k, neg_i, _ = self.branches(user, interaction[self.NEG_ITEM_ID])
        pos_fused, neg_fused = self.fused(pos_k, pos_i, pos_u), self.fused(neg_k, neg_i, pos_u)

        def bce(pos, neg):
            # the mean over the batch's 2B rows: B positives labelled 1, B negatives labelled 0
            return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
                    + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")) / (2 * len(pos))

        if self.fusion_loss == "bce":
            loss_o, loss_i = bce(pos_fused, neg_fused), bce(pos_i, neg_i)
        else:
            loss_o = -F.logsigmoid(pos_fused - neg_fused).mean()
            loss_i = -F.logsigmoid(pos_i - neg_i).mean()
        loss_u = bce(pos_u, pos_u)  # the user module sees the same user in both rows
        return loss_o + self.item_loss_weight * loss_i + self.user_loss_weight * loss_u

    def counterfactual(self, matching, item_logit, user_logit):
        """``ŷ_k σ(ŷ_i) σ(ŷ_u) − c σ(ŷ_i) σ(ŷ_u)``."""
        return (matching - self.c) * torch.sigmoid(item_logit) * torch.sigmoid(user_logit)

    def predict(self, interaction):
        return self.counterfactual(*self.branches(interaction[self.USER_ID], interaction[self.ITEM_ID]))

    def full_sort_predict(self, interaction):
        user_e = self.user_embedding(interaction[self.USER_ID])
        item_e = self.item_embedding.weight
        matching = torch.matmul(user_e, item_e.transpose(0, 1))  # [users, items]
        item_logit = self.item_module(item_e).view(1, -1)
        user_logit = self.user_module(user_e).view(-1, 1)
        return self.counterfactual(matching, item_logit, user_logit).view(-1)
