"""The design's losses, each written once and unit-tested in ``tests/test_losses.py``.

The graded objective (:func:`graded_bpr_loss`, :class:`LowerGradeSampler`) is here too.
Representations passed here as ``a`` (atom) and ``s`` (side) are L2-normalised, ``[batch, dim]``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def truncated_cosine_loss(cos, margin):
    r"""Stage-1 loss: atoms sit around their side. :math:`\mathrm{mean}(\max(0, m - \cos(a, s))^2)`
    of the cosines ``cos`` ``[batch]`` (of each row's atom and side representations)."""
    return F.relu(margin - cos).pow(2).mean()


def orthogonal_component(a, s):
    r"""The part of ``a`` orthogonal to its side ``s``, normalised: :math:`\mathrm{norm}(a - (a \cdot s) s)`."""
    return F.normalize(a - (a * s).sum(-1, keepdim=True) * s, dim=-1)


def fake_negative_mask(keys):
    """``[..., batch, batch]`` True where an in-batch negative is a fake one: another row with the
    anchor's key (``keys`` ``[..., batch]``: the same entity repeated in the batch, or the same
    side value). The diagonal (the positive) is never masked. Leading dimensions are independent
    problems."""
    diagonal = torch.eye(keys.shape[-1], dtype=torch.bool, device=keys.device)
    return (keys.unsqueeze(-1) == keys.unsqueeze(-2)) & ~diagonal


def info_nce(anchor, positive, temperature, mask=None):
    r"""InfoNCE of ``anchor[i]`` against ``positive[i]``, the other rows of ``positive`` being the
    negatives, except those where ``mask[i, j]`` is True (fake negatives): the mean over rows of
    :math:`-\log \frac{e^{\cos(x_i, y_i)/\tau}}{\sum_j e^{\cos(x_i, y_j)/\tau}}`.

    Leading dimensions (``[..., batch, dim]``, a mask ``[..., batch, batch]``) are independent
    problems solved in one batched product: the result has one loss per problem, ``[...]``."""
    logits = (F.normalize(anchor, dim=-1) / temperature) @ F.normalize(positive, dim=-1).transpose(-1, -2)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    rows = logits.shape[-1]
    targets = torch.arange(rows, device=logits.device).repeat(logits[..., 0, 0].numel())
    losses = F.cross_entropy(logits.reshape(-1, rows), targets, reduction="none")
    return losses.view(logits.shape[:-1]).mean(-1)


def complementary_field_masks(rows, fields, device=None):
    """``[2, rows, fields]`` bool: for each row, a random split of its ``fields`` (at least 2) into
    two non-empty complementary sets, the fields each of two SSL views keeps. The views then
    differ in what they know, as in the feature-masking views of two-tower SSL (Yao et al. 2021,
    "Self-supervised Learning for Large-scale Item Recommendations"), here with random groups."""
    rank = torch.rand(rows, fields, device=device).argsort(-1).argsort(-1)  # a random order of each row's fields
    first = rank < torch.randint(1, fields, (rows, 1), device=device)
    return torch.stack([first, ~first])


def gain(grade):
    """The gain of a grade, :math:`2^g - 1` (a sampled negative, grade 0, gains 0)."""
    return torch.pow(2.0, grade.float()) - 1


def graded_bpr_loss(pos_score, neg_score, pos_grade, sample_weight=None, lower_score=None, lower_grade=None,
                    lower_count=None, within_user_weight=0.0):
    r"""BPR over every ordered pair of different grades that a batch row offers, each pair weighted
    by its gain difference (:func:`gain`) times its sample weight.

    Row ``i`` is a positive of grade ``pos_grade[i]``: its pair with a sampled negative weighs
    :math:`(2^{g^+} - 1) - 0`. With ``lower_score``, ``lower_grade`` and ``lower_count`` it stands
    too for its pairs with every observed item of the same user and a lower grade, of which it
    holds one drawn uniformly among ``lower_count[i]``: that pair weighs
    ``within_user_weight`` :math:`\cdot ((2^{g^+} - 1) - (2^{g^-} - 1))` times ``lower_count[i]``,
    so that its expectation over the draw is the sum over all of them, as the objective counts
    every pair (a row without such an item has ``lower_count == 0``: weight 0). Every weight is
    divided by the batch's mean weight of the negative pairs, so the loss stays on BPR's scale
    and ``within_user_weight: 0`` is the positive-vs-negative objective alone. All grades equal
    and no within-user pair → plain BPR."""
    sample_weight = torch.ones_like(pos_score) if sample_weight is None else sample_weight
    weight = gain(pos_grade) * sample_weight
    scale = weight.mean()
    loss = -(weight * F.logsigmoid(pos_score - neg_score)).mean()
    if within_user_weight:
        within = within_user_weight * (gain(pos_grade) - gain(lower_grade)) * lower_count * sample_weight
        loss = loss - (within * F.logsigmoid(pos_score - lower_score)).mean()
    return loss / scale


class LowerGradeSampler(nn.Module):
    """Draws, for a (user, grade) row, one of the user's observed training items of a lower grade
    (not 0: those are sampled negatives), uniformly, vectorised over the batch.

    Built from the training interactions (``users``, ``items``, ``grades``, one entry each): they
    are sorted by user, then grade, so the items of user ``u`` with a grade below ``g`` are the
    first ``lower_counts[u, g]`` of its block. The tables are non-persistent buffers: they follow
    the model's device and stay out of checkpoints (the training split rebuilds them)."""

    def __init__(self, users, items, grades, n_users):
        super().__init__()
        top = int(grades.max()) + 1
        order = torch.argsort(users * top + grades, stable=True)
        users, items, grades = users[order], items[order], grades[order]
        counts = torch.zeros(n_users, top + 1, dtype=torch.long)
        counts.index_put_((users, grades.long() + 1), torch.ones_like(users), accumulate=True)
        self.register_buffer("lower_counts", counts.cumsum(1), persistent=False)  # [u, g]: items of u with grade < g
        per_user = torch.bincount(users, minlength=n_users)
        self.register_buffer("starts", per_user.cumsum(0) - per_user, persistent=False)
        self.register_buffer("items", items, persistent=False)
        self.register_buffer("grades", grades, persistent=False)

    def forward(self, users, grades):
        """``(items, their grades, counts)`` for each row: the drawn item, its grade and how many
        items it was drawn from (the user's items of a lower grade); a row whose user has none
        gets item 0 (RecBole's padding item), its own grade and count 0."""
        grades = grades.clamp(max=self.lower_counts.shape[1] - 1)
        lower = self.lower_counts[users, grades]
        found = lower > 0
        offset = (torch.rand(len(users), device=users.device) * lower).long().clamp(max=lower - 1).clamp(min=0)
        position = torch.where(found, self.starts[users] + offset, 0)
        items = torch.where(found, self.items[position], 0)
        return items, torch.where(found, self.grades[position], grades), lower


def batch_normalised(weight):
    """Weights rescaled to mean 1 in the batch, with no gradient through them."""
    weight = weight.detach()
    return weight / weight.mean()
