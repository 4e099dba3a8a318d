r"""TwoTowerSplit
################################################
A two-tower recommender whose towers map side and atom fields through separate MLPs and join
them with a linear output layer; trained with graded BPR. EndoDecouple's architecture without its
self-supervised terms: the ablation that separates "side and atom apart" from "decoupling".

Reference:
    The plugin's design log (endogenous decoupling; unpublished); two towers as in Xinyang Yi et
    al. "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations." in RecSys 2019.
"""

from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import SplitTower


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
