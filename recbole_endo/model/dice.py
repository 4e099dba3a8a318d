r"""DICE
################################################
Disentangling interest and conformity: each user and item has an interest embedding and a
conformity embedding, trained on cause-specific pairs chosen by the items' popularity, with a
discrepancy penalty between the two embedding sets.

Reference:
    Yu Zheng et al. "Disentangling User Interest and Conformity for Recommendation with Causal
    Embedding." in WWW 2021.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.utils import InputType

from recbole_endo.options import choice_option, number_option


TINY = 1e-12  # sqrt's gradient at 0 is infinite; a V-statistic dCov² is >= 0 up to rounding


def pairwise_distances(x):
    """Euclidean distances between the rows of ``x``, ``[n, n]``, from ``|x_j|² + |x_k|² - 2 x_j·x_k``
    (the product torch's ``cdist`` uses too), with an exact 0 diagonal."""
    squares = (x * x).sum(dim=1)
    squared = (squares.unsqueeze(1) + squares.unsqueeze(0)).sub_(x @ x.T, alpha=2).clamp_(min=0)
    return squared.fill_diagonal_(0).sqrt_()


def double_centred(d):
    """A symmetric matrix less its row and column means plus its grand mean."""
    means = d.mean(dim=1)
    return (d - means.unsqueeze(1)).sub_(means.unsqueeze(0)).add_(means.mean())


class DistanceCorrelation(torch.autograd.Function):
    r"""Distance correlation with its gradient written out: autograd through the n² matrices
    took about fifty passes over them, most of DICE's step on 15,000 users (32 s an epoch on
    Yahoo! R3). With ``A``, ``B`` the double-centred distance matrices, ``V_xy = mean(A∘B)`` and
    ``R = V_xy^{1/2} V_xx^{-1/4} V_yy^{-1/4}``: ``∂R/∂a = R/n² (B/(2V_xy) − A/(2V_xx))`` (centring
    is a projection, so ``∂V_xy/∂a = B/n²``), and a distance ``a_jk = |x_j − x_k|`` passes
    ``∂R/∂x_j = Σ_k 2 ∂R/∂a_jk (x_j − x_k)/a_jk``, nothing where ``a_jk = 0``."""

    @staticmethod
    def forward(ctx, x, y):
        a, b = pairwise_distances(x), pairwise_distances(y)
        centred_a, centred_b = double_centred(a), double_centred(b)
        v_xy, v_xx, v_yy = ((left * right).mean() for left, right in
                            ((centred_a, centred_b), (centred_a, centred_a), (centred_b, centred_b)))
        dcor = v_xy.clamp(min=TINY).sqrt() / (v_xx.clamp(min=TINY).sqrt() * v_yy.clamp(min=TINY).sqrt()).sqrt()
        ctx.save_for_backward(x, y, a, b, centred_a, centred_b, dcor, v_xy, v_xx, v_yy)
        return dcor

    @staticmethod
    def backward(ctx, grad):
        x, y, a, b, centred_a, centred_b, dcor, v_xy, v_xx, v_yy = ctx.saved_tensors

        def half_log_slope(v):  # d/dv of log sqrt(clamp(v)): none where the clamp holds (no host sync on a GPU)
            return torch.where(v > TINY, 0.5 / v, 0)

        scale = grad * dcor / len(x) ** 2
        cross, self_x, self_y = half_log_slope(v_xy), half_log_slope(v_xx), half_log_slope(v_yy)
        grad_a = centred_b * (scale * cross) - centred_a * (scale * self_x)
        grad_b = centred_a * (scale * cross) - centred_b * (scale * self_y)
        return points_gradient(x, a, grad_a), points_gradient(y, b, grad_b)


def points_gradient(x, distances, grad_distances):
    """The gradient on the rows of ``x`` of a symmetric gradient on their pairwise distances."""
    weights = torch.where(distances > 0, 2 * grad_distances / distances.clamp(min=TINY), 0)
    return weights.sum(dim=1, keepdim=True) * x - weights @ x


def distance_correlation(x, y):
    r"""Distance correlation (Székely et al. 2007, the sample V-statistic) between the rows of
    ``x`` and ``y`` (``[n, d]`` each): ``dCov(x, y) / sqrt(dVar(x) dVar(y))``, each ``dCov²`` the mean
    product of the double-centred pairwise distance matrices. 0 when fewer than two rows.
    Differentiable (:class:`DistanceCorrelation`)."""
    if len(x) < 2:
        return x.new_zeros(())
    return DistanceCorrelation.apply(x, y)


class DICE(GeneralRecommender):
    r"""DICE on matrix factorisation: a user's score for an item is
    :math:`\langle u^{int}, i^{int}\rangle + \langle u^{con}, i^{con}\rangle` (interest plus
    conformity; ``embedding_size`` is the size of each part).

    A training triple (u, i, j) of RecBole's sampled negative j is sorted by the items' training
    interaction counts ``n`` and the current margin ``m``:

    - O1, the negative less popular (``n_j < n_i - m``): the click could be conformity alone, so
      only the conformity part learns that u prefers i (BPR on the conformity scores);
    - O2, the negative more popular (``n_j > n_i + m``): u chose i over a more popular j, so
      interest prefers i (BPR on the interest scores) while conformity prefers j (BPR on the
      conformity scores, reversed);
    - within the margin: neither, as the paper's sampler never draws such a negative; RecBole's
      uniform sampler does, and the pair trains the click term only.

    Loss, each BPR term summed over its pairs and divided by the batch's pairs (as the official
    code's masked means):

    .. math::
        L = L_{click} + w_{int} L^{O2}_{int} + w_{con} (L^{O1}_{con} + L^{O2}_{con})
            + w_{dis} (\mathrm{dCor}(U^{int}, U^{con}) + \mathrm{dCor}(I^{int}, I^{con}))

    with :math:`L_{click}` BPR on the summed score over every pair. The discrepancy is the
    distance correlation between the interest and the conformity embeddings of the batch's
    distinct users, and of its distinct items (positives and negatives); with ``discrepancy_rows``
    set, over that many of each, drawn uniformly at each step where the batch holds more. dCor's
    cost is quadratic in the rows: on Yahoo! R3 a batch of 2,048 triples holds about 1,800 users
    and most of the 1,000 songs, and one dCor forward and backward took 300 ms at 1,800 rows against
    15 ms at 512 (one thread, beside busy ones); the official code's
    batches of 128 triples (four negatives each) hold at most 128 users and 640 items. Why dCor and not the
    paper's L1/L2 alternatives (``discrepancy: l1 | l2``, which subtract the mean absolute or
    squared difference): dCor is scale-free and bounded, so it cannot be lowered by inflating
    the embeddings, which maximising an L1/L2 distance rewards, and it measures dependence, not
    mere difference; the official code defaults to it.

    Curriculum (the paper's, "adaptive" in its code): at epoch ``e`` (from 0) the margin is
    ``pop_margin * margin_decay^e`` and the two cause-specific weights are
    ``w * loss_decay^e``; the discrepancy weight stays. RecBole's trainer switches the model to
    training mode once at the start of every epoch; the model counts those switches (a buffer,
    so a resumed run continues the schedule). The paper's margin is an absolute difference of
    counts (its code: 40 on ML-10M and Netflix; its O1 threshold is ``n_i / 2`` there); this
    model's default, 10, is sized for the plugin's smaller datasets.

    Inference ranks by the summed score (interest and conformity), as the paper's main results.
    """

    input_type = InputType.PAIRWISE
    reads_joined_features = False

    DISCREPANCIES = ("dcor", "l1", "l2")

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model; runs check it
        before loading any data."""
        number_option(config, "embedding_size", 1, integer=True)
        for weight in ("interest_weight", "conformity_weight", "discrepancy_weight"):
            number_option(config, weight, 0)
        choice_option(config, "discrepancy", cls.DISCREPANCIES)
        number_option(config, "pop_margin", 0)
        number_option(config, "margin_decay", 0, 1)
        number_option(config, "loss_decay", 0, 1)
        if config["discrepancy_rows"] is not None:
            number_option(config, "discrepancy_rows", 2, integer=True)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]
        self.interest_weight = config["interest_weight"]
        self.conformity_weight = config["conformity_weight"]
        self.discrepancy_weight = config["discrepancy_weight"]
        self.discrepancy = config["discrepancy"]
        self.pop_margin = config["pop_margin"]
        self.margin_decay = config["margin_decay"]
        self.loss_decay = config["loss_decay"]
        self.discrepancy_rows = config["discrepancy_rows"]

        self.user_interest = nn.Embedding(self.n_users, self.embedding_size)
        self.user_conformity = nn.Embedding(self.n_users, self.embedding_size)
        self.item_interest = nn.Embedding(self.n_items, self.embedding_size)
        self.item_conformity = nn.Embedding(self.n_items, self.embedding_size)
        counts = torch.bincount(dataset.inter_feat[self.ITEM_ID], minlength=self.n_items).float()
        self.register_buffer("item_count", counts, persistent=False)
        # Training epochs started (see train()); persistent, so a resumed run keeps the schedule.
        self.register_buffer("epochs_started", torch.zeros((), dtype=torch.long))
        self.apply(xavier_normal_initialization)

    def train(self, mode=True):
        """RecBole's trainer calls ``model.train()`` once as each training epoch starts."""
        if mode and hasattr(self, "epochs_started"):
            self.epochs_started += 1
        return super().train(mode)

    @property
    def epoch(self):
        """The current training epoch, from 0 (0 before any, too)."""
        return max(int(self.epochs_started) - 1, 0)

    def schedule(self):
        """``(margin, interest weight, conformity weight)`` at the current epoch."""
        epoch = self.epoch
        return (
            self.pop_margin * self.margin_decay**epoch,
            self.interest_weight * self.loss_decay**epoch,
            self.conformity_weight * self.loss_decay**epoch,
        )

    def cause_masks(self, pos_item, neg_item, margin):
        """Boolean masks ``(O1, O2)`` of the pairs: the negative less popular than the positive by
        more than ``margin`` training interactions, and more popular by more than ``margin``."""
        pos_count, neg_count = self.item_count[pos_item], self.item_count[neg_item]
        return neg_count < pos_count - margin, neg_count > pos_count + margin

    def scores(self, user, item):
        """``(interest, conformity)`` scores of the pairs ``(user, item)``."""
        interest = (self.user_interest(user) * self.item_interest(item)).sum(dim=1)
        conformity = (self.user_conformity(user) * self.item_conformity(item)).sum(dim=1)
        return interest, conformity

    def discrepancy_sample(self, ids):
        """``ids``, or ``discrepancy_rows`` of them drawn uniformly without replacement when there are more."""
        if self.discrepancy_rows is None or len(ids) <= self.discrepancy_rows:
            return ids
        return ids[torch.randperm(len(ids), device=ids.device)[: self.discrepancy_rows]]

    def discrepancy_loss(self, interest, conformity):
        """The discrepancy between two embedding sets, to be minimised: dCor, or minus the mean
        absolute (l1) or squared (l2) difference."""
        if self.discrepancy == "dcor":
            return distance_correlation(interest, conformity)
        if self.discrepancy == "l1":
            return -F.l1_loss(interest, conformity)
        return -F.mse_loss(interest, conformity)

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        pos_item = interaction[self.ITEM_ID]
        neg_item = interaction[self.NEG_ITEM_ID]
        margin, interest_weight, conformity_weight = self.schedule()

        pos_int, pos_con = self.scores(user, pos_item)
        neg_int, neg_con = self.scores(user, neg_item)
        o1, o2 = self.cause_masks(pos_item, neg_item, margin)
        pairs = len(user)

        click = -F.logsigmoid(pos_int + pos_con - neg_int - neg_con).mean()
        interest = -(F.logsigmoid(pos_int - neg_int) * o2).sum() / pairs
        conformity = (
            -(F.logsigmoid(pos_con - neg_con) * o1).sum() - (F.logsigmoid(neg_con - pos_con) * o2).sum()
        ) / pairs

        users = self.discrepancy_sample(torch.unique(user))
        items = self.discrepancy_sample(torch.unique(torch.cat([pos_item, neg_item])))
        discrepancy = self.discrepancy_loss(
            self.user_interest(users), self.user_conformity(users)
        ) + self.discrepancy_loss(self.item_interest(items), self.item_conformity(items))

        return (
            click
            + interest_weight * interest
            + conformity_weight * conformity
            + self.discrepancy_weight * discrepancy
        )

    def predict(self, interaction):
        interest, conformity = self.scores(interaction[self.USER_ID], interaction[self.ITEM_ID])
        return interest + conformity

    def full_sort_predict(self, interaction):
        user = interaction[self.USER_ID]
        user_e = torch.cat([self.user_interest(user), self.user_conformity(user)], dim=1)
        item_e = torch.cat([self.item_interest.weight, self.item_conformity.weight], dim=1)
        return torch.matmul(user_e, item_e.transpose(0, 1)).view(-1)
