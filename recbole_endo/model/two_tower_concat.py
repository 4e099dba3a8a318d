import torch.nn as nn

from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import FeatureEmbedding, mlp


class ConcatTower(nn.Module):
    """concat(atom embeddings, side embeddings) → MLP."""

    def __init__(self, dataset, entity, fields, config):
        super().__init__()
        self.embedding = FeatureEmbedding(dataset, entity, fields["atom"] + fields["side"], config["embedding_size"])
        self.mlp = mlp([self.embedding.output_size, *config["mlp_hidden_size"]], config["dropout_prob"])

    def forward(self, ids):
        return self.mlp(self.embedding(ids).flatten(-2))


class TwoTowerConcat(FeatureTowerRecommender):
    r"""Two-tower baseline: each tower is ``MLP(concat(atom embeddings, side embeddings))``.

    Score: dot product of the user and item towers. Loss: graded BPR on RecBole's sampled
    negatives (see :class:`FeatureTowerRecommender`).
    Hyper-parameters: ``embedding_size``, ``mlp_hidden_size``, ``dropout_prob``, ``endo_fields``.
    """

    tower_class = ConcatTower
