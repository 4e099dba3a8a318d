"""The seed's losses, each written once and unit-tested in ``tests/test_losses.py``.

Representations passed here as ``a`` (atom) and ``s`` (side) are L2-normalised, ``[batch, dim]``.
"""

import torch
import torch.nn.functional as F


def truncated_cosine_loss(cos, margin):
    r"""Stage-1 loss: atoms sit around their side. :math:`\mathrm{mean}(\max(0, m - \cos(a, s))^2)`
    of the cosines ``cos`` ``[batch]`` (of each row's atom and side representations)."""
    return F.relu(margin - cos).pow(2).mean()


def orthogonal_component(a, s):
    r"""The part of ``a`` orthogonal to its side ``s``, normalised: :math:`\mathrm{norm}(a - (a \cdot s) s)`."""
    return F.normalize(a - (a * s).sum(-1, keepdim=True) * s, dim=-1)


def fake_negative_mask(reference, threshold):
    """``[..., batch, batch]`` True where an in-batch negative is a fake one: another row whose
    reference representation has cosine > ``threshold`` with the anchor's (the same side value,
    or the same atom repeated in the batch). The diagonal (the positive) is never masked.
    Leading dimensions of ``reference`` (``[..., batch, dim]``) are independent problems."""
    reference = F.normalize(reference.detach(), dim=-1)
    rows = reference.shape[-2]
    diagonal = torch.eye(rows, dtype=torch.bool, device=reference.device)
    return (reference @ reference.transpose(-1, -2) > threshold) & ~diagonal


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


def grade_labels(ratings, thresholds):
    """Graded relevance of observed interactions: 1 + the number of thresholds ``rating`` reaches
    (the seed: rating >= 3 → 2, else 1). Sampled negatives have grade 0."""
    thresholds = torch.as_tensor(thresholds, dtype=ratings.dtype, device=ratings.device)
    return 1 + (ratings.unsqueeze(-1) >= thresholds).sum(-1)


def graded_bpr_loss(pos_score, neg_score, pos_grade, sample_weight=None):
    r"""BPR over (positive, sampled negative) pairs, each pair weighted by its gain difference
    :math:`(2^{g^+} - 1) - (2^{0} - 1)` times its sample weight, the weights normalised to mean 1
    in the batch (so the loss stays on BPR's scale). All grades equal → plain BPR."""
    weight = torch.pow(2.0, pos_grade.float()) - 1
    if sample_weight is not None:
        weight = weight * sample_weight
    weight = weight / weight.mean()
    return -(weight * F.logsigmoid(pos_score - neg_score)).mean()


def batch_normalised(weight):
    """Weights rescaled to mean 1 in the batch, with no gradient through them."""
    weight = weight.detach()
    return weight / weight.mean()
