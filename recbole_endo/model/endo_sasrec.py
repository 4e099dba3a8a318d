r"""EndoSASRec
################################################
Endogenous decoupling in sequence modelling: SASRec over EndoDecouple's item tower, whose side and
atom representations are shaped by the design's decoupling terms (stage-1, side SSL,
atom-orthogonal SSL with fake-negative masks) while the encoder learns the next item.

Reference:
    The plugin's design log (endogenous decoupling of side and atom representations; unpublished);
    Wang-Cheng Kang et al. "Self-Attentive Sequential Recommendation." in ICDM 2018; the SSL terms
    as in :mod:`recbole_endo.model.endo_decouple`.
"""

from recbole_endo.model.decoupling import DecouplingTerms
from recbole_endo.model.split_sasrec import SplitSASRec
from recbole_endo.model.towers import EndoTower


class EndoSASRec(SplitSASRec):
    r""":class:`SplitSASRec` with an :class:`EndoTower` as its item tower, trained with the
    decoupling terms (:class:`DecouplingTerms`, the options and switches of EndoDecouple) on the
    batch's target items. Total loss: SASRec's ranking loss (CE or BPR) + the weighted terms; the
    trainer logs each component, cos(a, s) and the share of targets inside the stage-1 margin.

    An item tower without a side (or an atom) field has nothing to decouple: the model is then
    SplitSASRec, and the log says so."""

    tower_class = EndoTower

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        DecouplingTerms.check_config(config)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.decoupling = DecouplingTerms(config)

    def item_terms(self, ids, target_rows):
        if not self.item_tower.decoupled:
            return super().item_terms(ids, target_rows)
        return self.decoupling.tower_terms(self.item_tower, ids, target_rows)

    def total_loss(self, rank, terms):
        if terms is None:
            return super().total_loss(rank, terms)
        total, self.loss_components = self.decoupling.total(rank, {"item": terms})
        return total
