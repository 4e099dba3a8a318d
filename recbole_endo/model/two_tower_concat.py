r"""TwoTowerConcat
################################################
A two-tower recommender whose towers embed every atom and side field, concatenate the embeddings
and map them through one MLP; trained with graded BPR. The plugin's feature-tower baseline.

Reference:
    Paul Covington et al. "Deep Neural Networks for YouTube Recommendations." in RecSys 2016;
    Xinyang Yi et al. "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations." in RecSys 2019 (two towers over id and feature embeddings).
"""

from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import FeatureEmbedding, FeatureTower, mlp


class ConcatTower(FeatureTower):
    """concat(atom embeddings, side embeddings) → MLP (plus the id path)."""

    def __init__(self, dataset, entity, fields, config):
        super().__init__(dataset, entity, config)
        self.embedding = FeatureEmbedding(dataset, entity, fields["atom"] + fields["side"], config["embedding_size"])
        self.mlp = mlp([self.embedding.output_size, *config["mlp_hidden_size"]], config["dropout_prob"])

    def forward(self, ids):
        return self.add_id_path(ids, self.mlp(self.embedding(ids).flatten(-2)))


class TwoTowerConcat(FeatureTowerRecommender):
    r"""Two-tower baseline: each tower is ``MLP(concat(atom embeddings, side embeddings))``.

    Score: dot product of the user and item towers. Loss: graded BPR on RecBole's sampled
    negatives (see :class:`FeatureTowerRecommender`).
    Hyper-parameters: ``embedding_size``, ``mlp_hidden_size``, ``dropout_prob``, ``id_path``, ``endo_fields``.

    Unseen atoms (a cold item's id, its title words never seen in training): replaced at the
    MLP's input by their field's mean trained embedding (:class:`FeatureEmbedding`). The MLP
    mixes atoms and sides in one layer, so there is no side-only path; an average atom is the
    input closest to what it was trained on.
    """

    tower_class = ConcatTower
