r"""EndoDecouple
################################################
The design's endogenous decoupling: TwoTowerSplit's towers, whose side and atom representations
are shaped by a truncated-cosine stage-1 loss, InfoNCE on the side representation and on the atom
part orthogonal to it (fake negatives masked), ranked with graded BPR (docs/model.md).

Reference:
    The plugin's design log (endogenous decoupling of side and atom representations; unpublished).
    Two-tower self-supervision with feature-masking views follows Tiansheng Yao et al.
    "Self-supervised Learning for Large-scale Item Recommendations." in CIKM 2021; InfoNCE is
    Aaron van den Oord et al. "Representation Learning with Contrastive Predictive Coding." 2018;
    BPR is Steffen Rendle et al. "BPR: Bayesian Personalized Ranking from Implicit Feedback." in UAI 2009.
"""

import math
from logging import getLogger

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.losses import (
    batch_normalised,
    complementary_field_masks,
    fake_negative_mask,
    info_nce,
    orthogonal_component,
    truncated_cosine_loss,
)
from recbole_endo.model.options import choice_option, number_option, sizes_option
from recbole_endo.model.towers import FIELD_GROUPS, mlp
from recbole_endo.model.two_tower_split import SplitTower

# rank_representation side_orthogonal: |s + a-perp| = sqrt(2), so a scale of 2 lets scores start
# within ±8, a range in which BPR's sigmoid is neither flat nor saturated.
RANK_SCALE_INIT = 2.0


class EndoTower(SplitTower):
    """A split tower with the design's self-supervised parts: two stochastic views of a group's field
    embeddings, and one projection head per SSL task (side, atom), not shared.

    Views (``ssl_views``): ``dropout``, each view an independent dropout of the embeddings;
    ``fields``, each row's fields split at random into two complementary non-empty sets, one per
    view (:func:`complementary_field_masks`), so the views must agree from different facts. A
    group of one field cannot be split: its views are dropout views.

    Ranking representation (``rank_representation``): ``output``, the split tower's output layer
    over both branches; ``side_orthogonal``, ``α (s + γ a⊥)`` with ``s``, ``a⊥`` as the SSL terms
    shape them and ``α``, ``γ`` learned positive scalars (``α`` starts at ``RANK_SCALE_INIT``,
    ``γ`` at 1), so the geometry the decoupling terms give the representations is the geometry
    the scores use: the side fixes where an entity sits, its own atom moves it only orthogonally.

    A tower with no side field (an entity without a feature file) or no atom field has nothing
    to decouple: it is a plain split tower, ``decoupled`` is False and it has no heads."""

    def __init__(self, dataset, entity, fields, config):
        super().__init__(dataset, entity, fields, config, config["rank_hidden_size"])
        missing = [group for group in FIELD_GROUPS if not fields[group]]
        self.decoupled = not missing
        self.side_orthogonal_ranking = self.decoupled and config["rank_representation"] == "side_orthogonal"
        if self.side_orthogonal_ranking:
            del self.output  # not used: the representation is built from s and a-perp
            self.rank_log_scale = nn.Parameter(torch.tensor(math.log(RANK_SCALE_INIT)))
            self.atom_log_weight = nn.Parameter(torch.zeros(()))
        if missing:
            getLogger().warning(
                f"EndoDecouple: endo_fields.{entity}.{missing[0]} names no field, so the {entity} tower's "
                "decoupling terms (stage-1, side SSL, atom SSL) are off"
            )
            return
        self.view_dropout = nn.Dropout(config["ssl_dropout"])
        self.field_views = config["ssl_views"] == "fields"
        size = config["mlp_hidden_size"][-1]
        self.heads = nn.ModuleDict({group: mlp([size, size, config["projection_size"]]) for group in FIELD_GROUPS})

    def combine(self, ids, branches):
        if not self.side_orthogonal_ranking:
            return super().combine(ids, branches)
        side, atom = (F.normalize(branches[group], dim=-1) for group in ("side", "atom"))
        representation = self.rank_log_scale.exp() * (side + self.atom_log_weight.exp() * orthogonal_component(atom, side))
        return self.add_id_path(ids, representation)

    def views(self, group, embedded):
        """Two stochastic views of each row of a group's field embeddings, through its branch in
        one pass and normalised: ``[2, rows, size]``."""
        rows, fields = embedded.shape[:2]
        if self.field_views and fields > 1:
            views = embedded * complementary_field_masks(rows, fields, embedded.device).unsqueeze(-1)
        else:
            views = self.view_dropout(embedded.expand(2, *embedded.shape))
        return F.normalize(self.branch(group, views), dim=-1)


class EndoDecouple(FeatureTowerRecommender):
    r"""Endogenous decoupling: side and atom representations learned apart, combined for ranking.

    Per tower (user and item alike), with ``s = norm(MLP_side(side embs))`` and
    ``a = norm(MLP_atom(atom embs))``:

    - **stage-1 loss** (atoms sit around their side): ``mean(max(0, margin − cos(a, s))²)``;
    - **side SSL**: InfoNCE between two views of ``s`` (``ssl_views``: dropout, or complementary
      field masks; :class:`EndoTower`) through the side projection head,
      in-batch negatives, negatives with cosine > ``fake_negative_threshold`` to the anchor's
      ``s`` masked out as fake (same side value);
    - **atom-orthogonal SSL**: the same on ``a⊥ = norm(a − (a·s)s)`` through the atom's own head,
      fake negatives (the same atom repeated in the batch) masked by cosine of ``a``;
    - both SSL terms use the batch's first ``ssl_batch_size`` rows (a random subset: batches are
      shuffled), since InfoNCE's in-batch negatives cost batch² time and memory;
    - under DDP the in-batch negatives are per process, not gathered: each process takes them
      from its own ``train_batch_size / world_size`` rows, so an anchor has
      ``min(ssl_batch_size, train_batch_size / world_size) − 1`` negatives (with the defaults,
      2048 / 2 ≥ 512, the same 511 as in one process, and the SSL terms cover ``world_size``
      times more rows per step);
    - **ranking representation** (``rank_representation``): ``output(concat(MLP_side, MLP_atom))``,
      the output a linear map or, with ``rank_hidden_size``, an MLP; or ``α (s + γ a⊥)`` with
      learned ``α``, ``γ`` (``side_orthogonal``, :class:`EndoTower`); plus the id embedding with
      ``id_path``; score = dot product; graded BPR as in
      :class:`FeatureTowerRecommender` (with ``within_user_weight``, its within-user pairs too).

    A tower without a side (or an atom) field, such as the item tower of a dataset without an
    ``.item`` file, has nothing to decouple: its decoupling terms are off, and the log says so.

    Total loss: ranking + ``stage1_weight``·stage1 + ``side_ssl_weight``·side_ssl +
    ``atom_ssl_weight``·atom_ssl, the auxiliary terms summed over both towers. A zero weight
    switches a term off; ``orthogonalize: False`` applies the atom SSL to ``a`` itself. The
    auxiliary terms are computed on the batch's users and positive items.

    ``sample_weight: endo`` replaces inverse-propensity weights by ``exp(−endo_eta · cos(a, s))`` of
    the positive item, gradient stopped, normalised to mean 1 in the batch. Why this map: the design
    found that frequent atoms pull their side representation towards themselves, so a high
    ``cos(a, s)`` marks an over-exposed atom, as high popularity does for IPW; a decreasing,
    positive, bounded map (ratio at most ``e^(2·endo_eta)``) mirrors IPW's ``popularity^−η``
    without IPW's exploding weights for rare items.

    Unseen atoms: as in :class:`TwoTowerSplit`, a cold item's id and unseen title words enter the
    atom branch as their field's mean trained embedding, so cold items differ by their side
    representation and known title words, the parts the SSL terms train to generalise. Its
    ranking representation is not the side one alone because the output layer combines both.
    """

    SAMPLE_WEIGHTS = ("none", "ipw", "endo")
    tower_class = EndoTower

    def __init__(self, config, dataset):
        self.margin = number_option(config, "stage1_margin", -1, 2)
        self.weights = {
            name: number_option(config, f"{name}_weight", 0) for name in ("stage1", "side_ssl", "atom_ssl")
        }
        self.temperature = number_option(config, "ssl_temperature", 0, low_open=True)
        self.fake_threshold = number_option(config, "fake_negative_threshold", -1, 1)
        self.orthogonalize = bool(config["orthogonalize"])
        self.endo_eta = number_option(config, "endo_eta", 0)
        self.ssl_batch_size = number_option(config, "ssl_batch_size", 2, integer=True)
        number_option(config, "ssl_dropout", 0, 1)
        choice_option(config, "rank_representation", ("output", "side_orthogonal"))
        choice_option(config, "ssl_views", ("dropout", "fields"))
        number_option(config, "projection_size", 1, integer=True)
        sizes_option(config, "rank_hidden_size", allow_empty=True)
        super().__init__(config, dataset)
        if self.sample_weight == "endo" and not self.towers["item"].decoupled:
            raise ValueError(
                "config option 'sample_weight' endo weighs items by cos(atom, side), but endo_fields.item "
                "lacks an atom or a side field: name both, or use sample_weight none or ipw"
            )

    def auxiliary(self, entity, ids, other_ids=None):
        """The tower's ranking representation, its stage-1 loss, its SSL problems and cos(a, s)
        (no loss, problem or cosine for a tower that is not ``decoupled``).

        An SSL problem is ``(views, reference)``: the two projected views of each SSL row
        ``[2, rows, projection_size]`` and the representation whose cosines mark fake negatives.
        The representation covers ``ids`` and then ``other_ids`` (the negative items) when given;
        the rest covers ``ids`` only. With ``deduplicate`` each distinct id runs through the tower
        once; the SSL views are drawn per row either way.
        """
        tower = self.towers[entity]
        if not tower.decoupled:
            parts = (ids,) if other_ids is None else (ids, other_ids)
            return torch.cat(self.tower_rows(entity, *parts)), {}, {}, None
        count = len(ids)
        if self.deduplicate and other_ids is not None:
            ids = torch.cat([ids, other_ids])
        distinct, index = self.distinct(ids)

        def rows(tensor, part=slice(None)):
            """``tensor``'s rows of ``ids[part]``: ``tensor`` has one row per distinct id."""
            return tensor[part] if index is None else tensor[index[part]]

        embedded = tower.embed(distinct)
        branches = {group: tower.branch(group, embedded[group]) for group in FIELD_GROUPS}
        # Normalised and compared once per distinct id; rows share the result.
        side, atom = (F.normalize(branches[group], dim=-1) for group in ("side", "atom"))
        cos = rows((atom * side).sum(-1), slice(0, count))
        losses = {}
        if self.weights["stage1"]:
            losses["stage1"] = truncated_cosine_loss(cos, self.margin)
        # SSL on the first ssl_batch_size rows: RecBole shuffles batches, so it is a random subset,
        # and InfoNCE costs batch² (four 2048² logit matrices would dominate a training step).
        ssl = slice(0, min(self.ssl_batch_size, count))
        s, a = rows(side, ssl), rows(atom, ssl)
        problems = {}
        if self.weights["side_ssl"]:
            views = tower.views("side", rows(embedded["side"], ssl))
            problems["side_ssl"] = tower.heads["side"](views), s
        if self.weights["atom_ssl"]:
            views = tower.views("atom", rows(embedded["atom"], ssl))
            if self.orthogonalize:
                views = orthogonal_component(views, s)
            problems["atom_ssl"] = tower.heads["atom"](views), a
        representation = rows(tower.combine(distinct, branches))
        if other_ids is not None and index is None:
            representation = torch.cat([representation, tower(other_ids)])
        return representation, losses, problems, cos

    def ssl_losses(self, problems):
        """``{name: InfoNCE}`` of every SSL problem of both towers, solved as one batch: they all
        have ``min(ssl_batch_size, batch)`` rows and the same sizes."""
        if not problems:
            return {}
        views, references = (torch.stack(parts) for parts in zip(*problems.values()))
        masks = fake_negative_mask(references, self.fake_threshold)
        return dict(zip(problems, info_nce(views[:, 0], views[:, 1], self.temperature, masks).unbind()))

    def calculate_loss(self, interaction):
        user_repr, user_losses, user_problems, user_cos = self.auxiliary("user", interaction[self.USER_ID])
        grades = self.grades(interaction)
        items, lower_grades = self.ranked_items(interaction, grades)
        count = len(grades)  # the positives come first; the auxiliary terms cover them only
        item_repr, item_losses, item_problems, item_cos = self.auxiliary("item", items[:count], items[count:])
        if self.sample_weight == "endo":
            weight = batch_normalised(torch.exp(-self.endo_eta * item_cos))
        else:
            weight = self.pair_weight(interaction)
        rank = self.ranking_loss(user_repr, item_repr, grades, lower_grades, weight)
        losses = {f"user_{name}": loss for name, loss in user_losses.items()}
        losses |= {f"item_{name}": loss for name, loss in item_losses.items()}
        problems = {f"user_{name}": problem for name, problem in user_problems.items()}
        problems |= {f"item_{name}": problem for name, problem in item_problems.items()}
        losses |= self.ssl_losses(problems)
        total = rank
        # Detached tensors, not floats: .item() would wait for the device once per component.
        self.loss_components = {"rank": rank.detach()}
        for name, loss in losses.items():
            total = total + self.weights[name.split("_", 1)[1]] * loss
            self.loss_components[name] = loss.detach()
        for entity, cos in (("user", user_cos), ("item", item_cos)):
            if cos is not None:
                self.loss_components[f"{entity}_cos_mean"] = cos.detach().mean()
                self.loss_components[f"{entity}_cos_min"] = cos.detach().min()
                # The share of rows the stage-1 loss acts on: 0 means the margin binds nothing.
                self.loss_components[f"{entity}_inside_margin"] = (cos.detach() < self.margin).float().mean()
        return total
