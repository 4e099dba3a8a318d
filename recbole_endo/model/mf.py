"""MF: biased matrix factorisation fitted to the observed ratings, the backbone and naive
baseline of the debiasing papers.

Reference: Yehuda Koren, Robert Bell and Chris Volinsky, "Matrix Factorization Techniques for
Recommender Systems", IEEE Computer 2009 (the biased model); trained as the naive baseline of
Tobias Schnabel et al., "Recommendations as Treatments: Debiasing Learning and Evaluation",
ICML 2016: the mean squared error on the observed ratings, each weighing the same.

:class:`BiasedMF` is the scoring module that MF, MFIPS, MFDR (both of its models) and RelMF share.
"""

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType
from torch import nn

from recbole_endo.model.options import number_option


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
    r"""Biased MF trained on the observed ratings by their mean squared error,
    :math:`\frac{1}{|B|} \sum_{(u,i) \in B} (r_{ui} - \hat r_{ui})^2` over a batch ``B`` of
    training ratings, with :math:`\hat r_{ui} = p_u \cdot q_i + b_u + b_i + b`.

    Point-wise on RecBole's training rows, with the rating (``RATING_FIELD``) as the target
    (neither ``LABEL_FIELD`` nor ``threshold``: those make 0/1 labels) and no sampled negatives
    (``train_neg_sample_args: ~``). The global bias starts at the mean training rating.
    Regularisation is RecBole's ``weight_decay`` (Adam's L2 term), as BPR's. Items are ranked by
    predicted rating. Options: ``properties/model/MF.yaml``.
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

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.RATING = rating_field(config, dataset, type(self).__name__)
        self.embedding_size = config["embedding_size"]
        self.mean_rating = float(dataset.inter_feat[self.RATING].double().mean())
        self.mf = BiasedMF(self.n_users, self.n_items, self.embedding_size, self.mean_rating)

    def forward(self, user, item):
        return self.mf(user, item)

    def squared_errors(self, interaction):
        """(r_ui - r̂_ui)^2 of the batch's pairs."""
        prediction = self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])
        return (prediction - interaction[self.RATING].float()) ** 2

    def calculate_loss(self, interaction):
        return self.squared_errors(interaction).mean()

    def predict(self, interaction):
        return self.forward(interaction[self.USER_ID], interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.mf.all_items(interaction[self.USER_ID]).view(-1)
