"""The design's decoupling terms on :class:`~recbole_endo.model.towers.EndoTower` s, shared by the
models that train them (EndoDecouple, EndoSASRec): their options, their computation on a tower
and their sum with the ranking loss, with the diagnostics each step logs (docs/model.md)."""

import torch
import torch.nn.functional as F

from recbole_endo.model.losses import fake_negative_mask, info_nce, orthogonal_component, truncated_cosine_loss
from recbole_endo.model.options import choice_option, number_option, sizes_option
from recbole_endo.model.towers import FIELD_GROUPS

TERMS = ("stage1", "side_ssl", "atom_ssl")


class DecouplingTerms:
    r"""Per tower, with ``s = norm(MLP_side(side embs))`` and ``a = norm(MLP_atom(atom embs))``:

    - **stage-1** (atoms sit around their side): ``mean(max(0, stage1_margin − cos(a, s))²)``;
    - **side SSL**: InfoNCE between two views of ``s`` (``ssl_views``, :class:`EndoTower`) through
      the side projection head, in-batch negatives, those with cosine > ``fake_negative_threshold``
      to the anchor's ``s`` masked out as fake (the same side value);
    - **atom-orthogonal SSL**: the same on ``a⊥ = norm(a − (a·s)s)`` (``orthogonalize: False``:
      on ``a``) through the atom's own head, fake negatives (the same atom repeated) masked by
      cosine of ``a``;
    - both SSL terms use the first ``ssl_batch_size`` auxiliary rows (RecBole shuffles batches,
      so a random subset), since InfoNCE's in-batch negatives cost rows² time and memory.

    The total loss is the ranking loss + ``<term>_weight`` · term, summed over the towers; a zero
    weight switches a term off. Reads and checks every option of the decoupling terms and the
    :class:`EndoTower` they train, so a bad value fails before the model is built."""

    def __init__(self, config):
        self.margin = number_option(config, "stage1_margin", -1, 2)
        self.weights = {name: number_option(config, f"{name}_weight", 0) for name in TERMS}
        self.temperature = number_option(config, "ssl_temperature", 0, low_open=True)
        self.fake_threshold = number_option(config, "fake_negative_threshold", -1, 1)
        self.orthogonalize = bool(config["orthogonalize"])
        self.ssl_batch_size = number_option(config, "ssl_batch_size", 2, integer=True)
        number_option(config, "ssl_dropout", 0, 1)
        choice_option(config, "rank_representation", ("output", "side_orthogonal"))
        choice_option(config, "ssl_views", ("dropout", "fields"))
        number_option(config, "projection_size", 1, integer=True)
        sizes_option(config, "rank_hidden_size", allow_empty=True)

    def tower_terms(self, tower, ids, rows=None):
        """``(representations, (losses, problems, cos))`` of a ``decoupled`` EndoTower: the ranking
        representation of each of ``ids``; and, for the auxiliary rows ``ids[rows]`` (``rows``
        indexes ``ids``; None: every id), the stage-1 loss, the SSL problems and cos(a, s).

        Each of ``ids`` runs through the tower once, so a caller passing distinct ids lets repeated
        rows share its output; the SSL views are drawn per row. An SSL problem is
        ``(views, reference)``: the two projected views of each SSL row ``[2, rows,
        projection_size]`` and the representation whose cosines mark fake negatives."""

        def at(tensor, part=slice(None)):
            """``tensor``'s auxiliary rows ``part``: ``tensor`` has one row per id."""
            return tensor[part] if rows is None else tensor[rows[part]]

        embedded = tower.embed(ids)
        branches = {group: tower.branch(group, embedded[group]) for group in FIELD_GROUPS}
        # Normalised and compared once per id; rows share the result.
        side, atom = (F.normalize(branches[group], dim=-1) for group in ("side", "atom"))
        cos = at((atom * side).sum(-1))
        losses = {}
        if self.weights["stage1"]:
            losses["stage1"] = truncated_cosine_loss(cos, self.margin)
        ssl = slice(0, min(self.ssl_batch_size, len(cos)))
        s, a = at(side, ssl), at(atom, ssl)
        problems = {}
        if self.weights["side_ssl"]:
            problems["side_ssl"] = tower.heads["side"](tower.views("side", at(embedded["side"], ssl))), s
        if self.weights["atom_ssl"]:
            views = tower.views("atom", at(embedded["atom"], ssl))
            if self.orthogonalize:
                views = orthogonal_component(views, s)
            problems["atom_ssl"] = tower.heads["atom"](views), a
        return tower.combine(ids, branches), (losses, problems, cos)

    def ssl_losses(self, problems):
        """``{name: InfoNCE}`` of every SSL problem, solved as one batch: they all have the same
        rows and sizes."""
        if not problems:
            return {}
        views, references = (torch.stack(parts) for parts in zip(*problems.values()))
        masks = fake_negative_mask(references, self.fake_threshold)
        return dict(zip(problems, info_nce(views[:, 0], views[:, 1], self.temperature, masks).unbind()))

    def total(self, rank, terms):
        """``(total loss, components)``: ``rank`` plus every weighted term of ``terms``
        (``{entity: terms}``, the terms of :meth:`tower_terms`; a tower that is not
        decoupled is left out), and the detached components a trainer logs: each loss, and per
        tower the mean and minimum cos(a, s) and the share of rows inside the stage-1 margin."""
        losses, problems = {}, {}
        for entity, (tower_losses, tower_problems, _) in terms.items():
            losses |= {f"{entity}_{name}": loss for name, loss in tower_losses.items()}
            problems |= {f"{entity}_{name}": problem for name, problem in tower_problems.items()}
        losses |= self.ssl_losses(problems)
        total = rank
        # Detached tensors, not floats: .item() would wait for the device once per component.
        components = {"rank": rank.detach()}
        for name, loss in losses.items():
            total = total + self.weights[name.split("_", 1)[1]] * loss
            components[name] = loss.detach()
        for entity, (_, _, cos) in terms.items():
            cos = cos.detach()
            components[f"{entity}_cos_mean"] = cos.mean()
            components[f"{entity}_cos_min"] = cos.min()
            # The share of rows the stage-1 loss acts on: 0 means the margin binds nothing.
            components[f"{entity}_inside_margin"] = (cos < self.margin).float().mean()
        return total, components
