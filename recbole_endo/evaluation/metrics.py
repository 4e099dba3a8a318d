"""The metrics of the plugin's list protocols, ``GradedNDCG`` and ``ListAUC``; importing
``recbole_endo`` registers them with RecBole's metric registry by name
(:func:`recbole_endo.compat.registration.register`)."""

import numpy as np
import torch
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType


class ListMetric(AbstractMetric):
    """A metric of ranked candidate lists with a value per user (:meth:`per_user`), averaged over
    the users that have one (a user's value may be NaN: undefined for its list)."""

    metric_type = EvaluatorType.RANKING

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]

    def per_user(self, dataobject):
        """``{key: [users]}``: each user's value of each key the metric reports."""
        raise NotImplementedError

    def calculate_metric(self, dataobject):
        return {
            key: round(float(np.nanmean(values)), self.decimal_place)
            for key, values in self.per_user(dataobject).items()
        }


class GradedNDCG(ListMetric):
    r"""Graded NDCG of a ranked candidate list: :math:`\mathrm{DCG}/\mathrm{IDCG}` with gain
    :math:`2^{g} - 1` and discount :math:`1/\log_2(\mathrm{rank} + 1)`, at each ``topk`` cutoff
    (``gndcg@k``) and over the whole list (``gndcg``), averaged over users.

    Needs ``rec.graded``: per user, the grades of the list's items in the model's ranked order,
    padded with 0 (a zero gain changes neither DCG nor IDCG). The plugin's list protocols fill it
    (:func:`recbole_endo.evaluation.protocols.list_evaluation`); RecBole's full-ranking collector
    does not know graded labels.
    """

    metric_need = ["rec.graded"]

    def per_user(self, dataobject):
        """Each user's graded NDCG at each cutoff and over the whole list, ``{key: [users]}``."""
        if "rec.graded" not in dataobject:
            raise ValueError(
                "metric 'GradedNDCG' ranks graded candidate lists: use it through the plugin's "
                "list_eval option (sampled or exposed), not in RecBole's full-ranking 'metrics'"
            )
        ranked = dataobject.get("rec.graded").double()
        gains = torch.pow(2.0, ranked) - 1
        ideal = torch.pow(2.0, ranked.sort(dim=1, descending=True).values) - 1
        discount = 1.0 / torch.log2(torch.arange(2, ranked.shape[1] + 2, dtype=torch.double))
        dcg, idcg = (gains * discount).cumsum(1), (ideal * discount).cumsum(1)
        result = {f"gndcg@{k}": (dcg[:, k - 1] / idcg[:, k - 1]).numpy() for k in self.topk}
        result["gndcg"] = (dcg[:, -1] / idcg[:, -1]).numpy()
        return result


class ListAUC(ListMetric):
    r"""AUC of each user's candidate list: the share of its (relevant, non-relevant) pairs that the
    ranking puts in the right order, averaged over users (``auc``). A user whose list lacks a
    relevant or a non-relevant item has no AUC (NaN) and is left out of the mean.

    Per user, not pooled: the doubly-robust papers' AUC on Coat and Yahoo! R3 pools every test
    pair of every user, which compares scores across users, as a rating predictor's are and a
    ranking model's (BPR, the towers) are not; within a user's random items both kinds rank.

    Needs ``rec.graded`` (grade > 0: relevant) and ``rec.listed`` (False: padding), per user in
    the model's ranked order, as the plugin's list protocols fill them."""

    metric_need = ["rec.graded", "rec.listed"]

    def per_user(self, dataobject):
        listed = dataobject.get("rec.listed").bool()
        relevant = (dataobject.get("rec.graded") > 0) & listed
        irrelevant = ~relevant & listed
        # Each non-relevant item is ranked below as many relevant items as precede it.
        right = (relevant.double().cumsum(1) * irrelevant).sum(1)
        pairs = relevant.sum(1).double() * irrelevant.sum(1)
        return {"auc": torch.where(pairs > 0, right / pairs, torch.nan).numpy()}
