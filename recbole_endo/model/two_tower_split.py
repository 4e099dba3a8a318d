r"""TwoTowerSplit
################################################
A two-tower recommender whose towers map side and atom fields through separate MLPs and join
them with a linear output layer; trained with graded BPR. EndoDecouple's architecture without its
self-supervised terms: the ablation that separates "side and atom apart" from "decoupling".

Reference:
    The plugin's design log (endogenous decoupling; unpublished); two towers as in Xinyang Yi et
    al. "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations." in RecSys 2019.
"""

import torch
import torch.nn as nn

from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import FIELD_GROUPS, FeatureEmbedding, FeatureTower, mlp


class SplitTower(FeatureTower):
    """concat(MLP_side(side embeddings), MLP_atom(atom embeddings)) → output layer.

    The output layer is linear, or an MLP when ``output_hidden_sizes`` is given. A group with no
    configured field has no branch.
    """

    def __init__(self, dataset, entity, fields, config, output_hidden_sizes=()):
        super().__init__(dataset, entity, config)
        embedding_size, hidden_sizes, dropout = config["embedding_size"], config["mlp_hidden_size"], config["dropout_prob"]
        groups = [group for group in FIELD_GROUPS if fields[group]]
        self.embeddings = nn.ModuleDict(
            {group: FeatureEmbedding(dataset, entity, fields[group], embedding_size, group) for group in groups}
        )
        self.mlps = nn.ModuleDict(
            {group: mlp([self.embeddings[group].output_size, *hidden_sizes], dropout) for group in groups}
        )
        size = hidden_sizes[-1]
        self.output = mlp([len(groups) * size, *output_hidden_sizes, size], dropout)

    def embed(self, ids):
        """Field embeddings per group: ``{group: [batch, fields, embedding_size]}``."""
        return {group: embedding(ids) for group, embedding in self.embeddings.items()}

    def branch(self, group, embedded):
        return self.mlps[group](embedded.flatten(-2))

    def combine(self, ids, branches):
        """The representation of ``ids`` from their branches' outputs (and the id path)."""
        return self.add_id_path(ids, self.output(torch.cat([branches[group] for group in self.embeddings], dim=-1)))

    def forward(self, ids):
        return self.combine(ids, {group: self.branch(group, embedded) for group, embedded in self.embed(ids).items()})


class TwoTowerSplit(FeatureTowerRecommender):
    r"""Two-tower baseline: each tower is ``Linear(concat(MLP_side(side embs), MLP_atom(atom embs)))``.

    Score: dot product of the user and item towers. Loss: graded BPR on RecBole's sampled
    negatives (see :class:`FeatureTowerRecommender`).
    Hyper-parameters: ``embedding_size``, ``mlp_hidden_size``, ``dropout_prob``, ``id_path``, ``endo_fields``.

    Unseen atoms: a cold item is ranked by its side branch plus the atom branch of its known
    title words and the mean trained embedding in place of its id and unseen words
    (:class:`FeatureEmbedding`). Not the side branch alone: the output layer was only ever
    trained on both branches, and a zero atom branch is an input it has never seen.
    """

    tower_class = SplitTower
