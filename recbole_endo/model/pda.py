r"""PDA
################################################
Popularity-bias deconfounding (PD) and adjusting (PDA): matrix factorisation trained with each
item's score multiplied by its popularity to the power γ, and ranked without it (PD) or with a
predicted popularity (PDA).

Reference:
    Yang Zhang et al. "Causal Intervention for Leveraging Popularity Bias in Recommendation."
    in SIGIR 2021.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType

from recbole_endo.options import choice_option, number_option


def elu_plus_one(x):
    """The paper's ELU': ``exp(x)`` for ``x <= 0``, ``x + 1`` above; positive and increasing."""
    return F.elu(x) + 1


class PDA(GeneralRecommender):
    r"""PD / PDA on matrix factorisation, ``f(u, i) = <u, i>``.

    Training (the paper's deconfounded training): BPR on the popularity-weighted scores,

    .. math::
        L = -\log \sigma\big(\mathrm{ELU}'(f(u, i))\, m_i^{\gamma} - \mathrm{ELU}'(f(u, j))\, m_j^{\gamma}\big)

    over RecBole's (u, i, j) triples. ``m`` is an item's share of the interactions, divided by
    the most popular item's, so it lies in [0, 1] (the official code's per-stage min-max
    normalisation of its smoothed shares gives the same whenever some item is absent from the
    stage). Which popularity, ``popularity_stages``:

    - 1 (default): the item's popularity over the whole training split (the simple choice, and
      the only one without a timestamp field);
    - S > 1, as the paper: the training split's time span cut into S stages of equal length, and
      both items of a triple weighted by their popularity in the stage of the interaction's
      timestamp (local popularity). Needs the timestamp field (``TIME_FIELD``) loaded.

    Inference (``predict_method``):

    - ``PD`` (default): the deconfounded score ``ELU'(f(u, i))``, popularity cut off;
    - ``PDA``: ``ELU'(f(u, i)) * m̃_i^γ̃`` with ``m̃`` the popularity in the last stage of the
      training time span (the paper's simplest popularity prediction; its linear extrapolation
      from the last two stages is not implemented) and ``γ̃ = adjust_exponent`` (default: γ).
      With ``popularity_stages`` 1 the last stage is the whole span. Needs the timestamp field
      even then: without time there is no "last stage" to predict from, so PDA is refused rather
      than quietly using the global popularity PD was trained to remove.
    """

    input_type = InputType.PAIRWISE
    reads_joined_features = False

    PREDICT_METHODS = ("PD", "PDA")

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model that needs no
        dataset; runs check it before loading any data. Whether the dataset has the timestamps
        that ``popularity_stages`` > 1 and PDA need is checked when the model is built."""
        number_option(config, "embedding_size", 1, integer=True)
        number_option(config, "pop_exponent", 0)
        number_option(config, "popularity_stages", 1, integer=True)
        choice_option(config, "predict_method", cls.PREDICT_METHODS)
        if config["adjust_exponent"] is not None:
            number_option(config, "adjust_exponent", 0)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.pop_exponent = config["pop_exponent"]
        self.stages = config["popularity_stages"]
        self.predict_method = config["predict_method"]
        adjust_exponent = config["adjust_exponent"]
        self.adjust_exponent = self.pop_exponent if adjust_exponent is None else adjust_exponent
        self.TIME = config["TIME_FIELD"]
        has_time = self.TIME is not None and self.TIME in dataset.inter_feat
        for needs_time, option in ((self.stages > 1, "popularity_stages"), (self.predict_method == "PDA", "predict_method")):
            if needs_time and not has_time:
                raise ValueError(
                    f"config option '{option}' is {config[option]!r}, which needs the interactions' time "
                    f"(the stages of the training time span), but the dataset has no timestamp field "
                    f"'{self.TIME}' (TIME_FIELD) in its interactions: load it in load_col['inter'], or "
                    "train with popularity_stages: 1 and rank with predict_method: PD"
                )

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size)
        items = dataset.inter_feat[self.ITEM_ID]
        if has_time:
            times = dataset.inter_feat[self.TIME].double()
            start, end = times.min(), times.max()
        else:
            times, start, end = torch.zeros(len(items), dtype=torch.float64), 0.0, 0.0
        self.register_buffer("time_span", torch.tensor([float(start), float(end)], dtype=torch.float64), persistent=False)
        stage = self.stage_of(times)
        counts = torch.zeros(self.stages, self.n_items).index_put_((stage, items), torch.ones(len(items)), accumulate=True)
        popularity = counts / counts.max(dim=1, keepdim=True).values.clamp(min=1)
        self.register_buffer("stage_popularity", popularity, persistent=False)  # [stages, items], m in [0, 1]
        self.apply(xavier_normal_initialization)

    def stage_of(self, times):
        """The stage (0 .. stages - 1) of each timestamp: the training time span cut into equal
        lengths, the last stage closed at the span's end; a time outside the span is clamped."""
        start, end = self.time_span[0], self.time_span[1]
        if self.stages == 1 or end <= start:
            return torch.zeros(len(times), dtype=torch.long, device=times.device)
        position = (times.double() - start) / (end - start) * self.stages
        return position.floor().long().clamp(0, self.stages - 1)

    def interaction_stage(self, interaction):
        if self.stages == 1:
            return torch.zeros(len(interaction[self.USER_ID]), dtype=torch.long, device=self.device)
        return self.stage_of(interaction[self.TIME])

    def deconfounded(self, user, item):
        """``ELU'(f(u, i))`` of the pairs: the score without popularity (PD)."""
        return elu_plus_one((self.user_embedding(user) * self.item_embedding(item)).sum(dim=1))

    def training_scores(self, interaction):
        """``ELU'(f(u, i)) m_i^γ`` and ``ELU'(f(u, j)) m_j^γ``, m in the interaction's stage."""
        user = interaction[self.USER_ID]
        pos_item, neg_item = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        stage = self.interaction_stage(interaction)
        pos = self.deconfounded(user, pos_item) * self.stage_popularity[stage, pos_item] ** self.pop_exponent
        neg = self.deconfounded(user, neg_item) * self.stage_popularity[stage, neg_item] ** self.pop_exponent
        return pos, neg

    def calculate_loss(self, interaction):
        pos, neg = self.training_scores(interaction)
        return -F.logsigmoid(pos - neg).mean()

    def adjustment(self):
        """Each item's ranking factor: 1 for PD, ``m̃^γ̃`` (the last stage's popularity) for PDA."""
        if self.predict_method == "PD":
            return None
        return self.stage_popularity[-1] ** self.adjust_exponent

    def predict(self, interaction):
        item = interaction[self.ITEM_ID]
        score = self.deconfounded(interaction[self.USER_ID], item)
        adjustment = self.adjustment()
        return score if adjustment is None else score * adjustment[item]

    def full_sort_predict(self, interaction):
        user_e = self.user_embedding(interaction[self.USER_ID])
        score = elu_plus_one(torch.matmul(user_e, self.item_embedding.weight.transpose(0, 1)))
        adjustment = self.adjustment()
        if adjustment is not None:
            score = score * adjustment
        return score.view(-1)
