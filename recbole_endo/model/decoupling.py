"""The design's decoupling terms on :class:`~recbole_endo.model.towers.EndoTower` s, shared by the
models that train them (EndoDecouple, EndoSASRec): their options, their computation on a tower
and their sum with the ranking loss, with the diagnostics each step logs (docs/model.md)."""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from recbole_endo.model.losses import fake_negative_mask, info_nce, orthogonal_component, truncated_cosine_loss
from recbole_endo.model.towers import FIELD_GROUPS
from recbole_endo.options import choice_option, number_option, sizes_option

TERMS = ("stage1", "side_ssl", "atom_ssl")


class SSLProblem(NamedTuple):
    """One InfoNCE problem: the two projected views of each SSL row ``[2, rows, projection_size]``
    and the rows' value classes ``[rows]``, equal for fake negatives (:meth:`EndoTower.value_classes`)."""

    views: torch.Tensor
    keys: torch.Tensor


class TowerTerms(NamedTuple):
    """A tower's decoupling terms for its auxiliary rows: ``{name: loss}`` (stage-1),
    ``{name: SSLProblem}`` and cos(a, s) per row."""

    losses: dict
    problems: dict
    cos: torch.Tensor


class DecouplingTerms:
    r"""Per tower, with ``s = norm(MLP_side(side embs))`` and ``a = norm(MLP_atom(atom embs))``:

    - **stage-1** (atoms sit around their side): ``mean(max(0, stage1_margin − cos(a, s))²)``;
    - **side SSL**: InfoNCE between two views of ``s`` (``ssl_views``, :class:`EndoTower`) through
      the side projection head, in-batch negatives;
    - **atom-orthogonal SSL**: the same on ``a⊥ = norm(a − (a·s)s)`` (``orthogonalize: False``:
      on ``a``) through the atom's own head; ``atom_ssl_side_gradient: False`` makes ``s`` a
      constant in ``a⊥``, so this term moves the atom branch only;
    - **fake negatives** (``mask_fake_negatives``): in each SSL problem, an in-batch negative whose
      fields of the problem's group have the anchor's values is masked out
      (:meth:`EndoTower.value_classes`): for the side SSL an entity with the same side, for the
      atom SSL the same entity repeated in the batch. Judged by the fields, not by the
      representations, so dropout, the views or a float field cannot hide or invent one;
    - both SSL terms use the first ``ssl_batch_size`` auxiliary rows (RecBole shuffles batches,
      so a random subset), since InfoNCE's in-batch negatives cost rows² time and memory.

    The total loss is the ranking loss + ``<term>_weight`` · term, summed over the towers; a zero
    weight switches a term off. :meth:`check_config` checks every option of the decoupling terms
    and of the :class:`EndoTower` they train; the models that train them call it before they
    build (and runs, before loading any data)."""

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the terms or their towers."""
        number_option(config, "stage1_margin", -1, 2)
        for name in TERMS:
            number_option(config, f"{name}_weight", 0)
        number_option(config, "ssl_temperature", 0, low_open=True)
        number_option(config, "ssl_batch_size", 2, integer=True)
        number_option(config, "ssl_dropout", 0, 1, high_open=True)
        choice_option(config, "rank_representation", ("output", "side_orthogonal"))
        choice_option(config, "ssl_views", ("dropout", "fields"))
        number_option(config, "projection_size", 1, integer=True)
        sizes_option(config, "rank_hidden_size", allow_empty=True)

    def __init__(self, config):
        """The terms of ``config``'s options, checked by :meth:`check_config`."""
        self.margin = config["stage1_margin"]
        self.weights = {name: config[f"{name}_weight"] for name in TERMS}
        self.temperature = config["ssl_temperature"]
        self.mask_fake_negatives = bool(config["mask_fake_negatives"])
        self.orthogonalize = bool(config["orthogonalize"])
        self.atom_ssl_side_gradient = bool(config["atom_ssl_side_gradient"])
        self.ssl_batch_size = config["ssl_batch_size"]

    def tower_terms(self, tower, ids, rows=None):
        """``(representations, TowerTerms)`` of a ``decoupled`` EndoTower: the ranking
        representation of each of ``ids``; and, for the auxiliary rows ``ids[rows]`` (``rows``
        indexes ``ids``; None: every id), the stage-1 loss, the SSL problems and cos(a, s).

        Each of ``ids`` runs through the tower once, so a caller passing distinct ids lets repeated
        rows share its output; the SSL views are drawn per row, and go through each branch in the
        same pass as the ids (:meth:`EndoTower.branch_with_views`)."""

        rows = torch.arange(len(ids), device=ids.device) if rows is None else rows
        ssl_rows = rows[: self.ssl_batch_size]
        embedded = tower.embed(ids)
        branches, views = {}, {}
        for group in FIELD_GROUPS:
            if self.weights[f"{group}_ssl"]:
                branches[group], views[group] = tower.branch_with_views(group, embedded[group], ssl_rows)
            else:
                branches[group] = tower.branch(group, embedded[group])
        # Normalised and compared once per id; rows share the result.
        side, atom = (F.normalize(branches[group], dim=-1) for group in ("side", "atom"))
        cos = (atom * side).sum(-1).index_select(0, rows)
        losses = {}
        if self.weights["stage1"]:
            losses["stage1"] = truncated_cosine_loss(cos, self.margin)
        ssl_ids = ids[ssl_rows]
        problems = {}
        if "side" in views:
            problems["side_ssl"] = SSLProblem(tower.heads["side"](views["side"]), tower.value_classes("side", ssl_ids))
        if "atom" in views:
            atom_views = views["atom"]
            if self.orthogonalize:
                s = side.index_select(0, ssl_rows)
                atom_views = orthogonal_component(atom_views, s if self.atom_ssl_side_gradient else s.detach())
            problems["atom_ssl"] = SSLProblem(tower.heads["atom"](atom_views), tower.value_classes("atom", ssl_ids))
        return tower.combine(ids, branches), TowerTerms(losses, problems, cos)

    def ssl_losses(self, problems):
        """``({key: InfoNCE}, {key: share of fake negatives})`` of every SSL problem of
        ``problems`` (``{key: SSLProblem}``), solved as one batch (they all have the same rows and sizes). The share counts the off-diagonal
        entries that :func:`fake_negative_mask` marks, masked out or not (``mask_fake_negatives``),
        so the diagnostic says how many negatives were fake either way."""
        if not problems:
            return {}, {}
        views, keys = (torch.stack(parts) for parts in zip(*problems.values()))
        masks = fake_negative_mask(keys)
        rows = masks.shape[-1]
        shares = masks.flatten(1).sum(1) / max(rows * (rows - 1), 1)
        losses = info_nce(views[:, 0], views[:, 1], self.temperature, masks if self.mask_fake_negatives else None)
        return dict(zip(problems, losses.unbind())), dict(zip(problems, shares.unbind()))

    def total(self, rank, terms):
        """``(total loss, components)``: ``rank`` plus every weighted term of ``terms``
        (``{entity: TowerTerms}``, of :meth:`tower_terms`; a tower that is not
        decoupled is left out), and the detached components a trainer logs: each loss, each SSL
        problem's share of fake negatives, and per tower the mean and minimum cos(a, s) and the
        share of rows inside the stage-1 margin."""
        # Keyed by (entity, term): the term gives the weight, both name the logged component.
        losses, problems = {}, {}
        for entity, tower_terms in terms.items():
            losses |= {(entity, term): loss for term, loss in tower_terms.losses.items()}
            problems |= {(entity, term): problem for term, problem in tower_terms.problems.items()}
        ssl_losses, fake_shares = self.ssl_losses(problems)
        losses |= ssl_losses
        total = rank
        # Detached tensors, not floats: .item() would wait for the device once per component.
        components = {"rank": rank.detach()}
        for (entity, term), loss in losses.items():
            total = total + self.weights[term] * loss
            components[f"{entity}_{term}"] = loss.detach()
        components |= {f"{entity}_{term}_fake_share": share for (entity, term), share in fake_shares.items()}
        for entity, tower_terms in terms.items():
            cos = tower_terms.cos.detach()
            components[f"{entity}_cos_mean"] = cos.mean()
            components[f"{entity}_cos_min"] = cos.min()
            # The share of rows the stage-1 loss acts on: 0 means the margin binds nothing.
            components[f"{entity}_inside_margin"] = (cos < self.margin).float().mean()
        return total, components
