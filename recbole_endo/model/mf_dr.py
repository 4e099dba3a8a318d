"""MFDR: matrix factorisation trained by doubly robust joint learning (DR-JL).

Reference: Xiaojie Wang, Rui Zhang, Yu Sun and Jianzhong Qi, "Doubly Robust Joint Learning for
Recommendation on Data Missing Not at Random", ICML 2019.

``rating_loss`` (MF's option): ``squared`` (default) imputes ratings and their squared errors, as
the DR-JL formulation on ratings; ``bce`` follows the doubly robust papers' public code (e.g.
CrazyDumpling/CDR_CIKM2023 ``baseline/MF.py``, ``MF_DR``; the StableDR code): binarised ratings,
the error the binary cross-entropy of the prediction against the label, imputed as the binary
cross-entropy of the prediction against the imputation model's sigmoid, with the arguments
swapped in the imputation model's step as there. The estimator's form (1/p weights on
``e - e_hat``, the 1/|D| normalisation) stays this module's.
"""

import torch

from recbole_endo.model.mf import BiasedMF
from recbole_endo.model.mf_ips import MFIPS
from recbole_endo.options import number_option


class MFDR(MFIPS):
    r"""A prediction model (biased MF, scoring :math:`\hat r_{ui}`; it ranks) and an error
    imputation model (a second biased MF, scoring :math:`\tilde r_{ui}`), learned jointly.

    Errors, with MF's per-pair loss :math:`\ell` of ``rating_loss`` (:meth:`~MF.pair_losses`) and
    :math:`t(s)` what a score predicts (:meth:`~MF.as_target`: the rating :math:`s` for
    ``squared``, the probability :math:`\sigma(s)` for ``bce``): :math:`e_{ui} = \ell(\hat r_{ui},
    y_{ui})` on the observed pairs, :math:`y` the rating or its binarised label; imputed errors
    :math:`\hat e_{ui} = \ell(\hat r_{ui}, t(\tilde r_{ui}))` on any pair: the imputation model
    imputes the rating (the label's probability) and the error is the prediction's loss against
    it, as the public DR-JL implementations do. An imputed error that did not depend on
    :math:`\hat r` would add a constant to the prediction model's loss, whose gradient would then
    be IPS's. ``squared``: :math:`e = (r - \hat r)^2`, :math:`\hat e = (\hat r - \tilde r)^2`.
    ``bce``: :math:`e = \mathrm{BCE}(\sigma(\hat r), y)`, :math:`\hat e =
    \mathrm{BCE}(\sigma(\hat r), \sigma(\tilde r))`.

    - Prediction model, the DR estimate of the mean error over all pairs D:
      :math:`\frac{1}{|D|} \left[ \sum_{D} \hat e_{ui} + \sum_{O_{ui} = 1} \frac{e_{ui} - \hat e_{ui}}{p_{ui}} \right]`.
    - Imputation model: :math:`\frac{1}{|D|} \sum_{O_{ui} = 1} \frac{(e_{ui} - \hat e'_{ui})^2}{p_{ui}}`
      (the paper's :math:`\sum_O (e - \hat e)^2 / p`, scaled as the DR term), where
      :math:`\hat e'_{ui} = \ell(\tilde r_{ui}, t(\hat r_{ui}))` scores the model being trained
      against the fixed prediction: the same as :math:`\hat e` for ``squared``; for ``bce``
      :math:`\mathrm{BCE}(\sigma(\tilde r), \sigma(\hat r))`, the arguments in the other order,
      as the papers' code computes its imputation step (``binary_cross_entropy(imputation_y, pred)``).

    "All pairs": each batch of observed ratings draws ``all_pairs_ratio`` times its size of
    pairs uniformly from the whole matrix (users and items uniform over the ids, padding
    excluded; observed pairs can be drawn, as they belong to D). With N training ratings,
    :math:`\text{mean}_{S} \hat e + \frac{N}{|D|}\, \text{mean}_{B} (e - \hat e)/p` estimates the
    DR sum without bias, ``S`` the drawn pairs and ``B`` the batch; the imputation loss likewise.

    Alternation: RecBole's trainer calls ``calculate_loss`` once per batch and steps one
    optimizer over all parameters. The loss returned is ``(dr_loss, imputation_loss)`` (RecBole
    sums the tuple and logs each part), where the DR loss reads the imputed ratings detached and
    the imputation loss reads the prediction detached (the observed error too). Each model's
    parameters thus get gradients from their own objective only, and one step updates both: the
    paper's alternating updates, one step of each per batch, taken together rather than one after
    the other (the imputation step sees the prediction before this batch's update). Adam's
    per-parameter steps make the two losses' scales independent; ``learning_rate`` and
    ``weight_decay`` are shared.

    Propensities (``propensity``) and the ratings' share of the matrix: MFIPS's, of which it is
    the subclass (:class:`~recbole_endo.model.mf_ips.MFIPS`); they must be probabilities here,
    since the DR term weighs propensity-weighted terms against unweighted ones. Options:
    ``recbole_endo/properties/model/MFDR.yaml``.
    """

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        number_option(config, "all_pairs_ratio", 1, integer=True)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.all_pairs_ratio = config["all_pairs_ratio"]
        self.imputation = BiasedMF(self.n_users, self.n_items, self.embedding_size, self.initial_bias)

    def sample_pairs(self, count):
        """``count`` pairs drawn uniformly from the whole matrix (ids from 1: 0 is padding)."""
        users = torch.randint(1, self.n_users, (count,), device=self.device)
        items = torch.randint(1, self.n_items, (count,), device=self.device)
        return users, items

    def dr_losses(self, interaction, sampled_users, sampled_items):
        """``(dr_loss, imputation_loss)`` of the batch with the drawn pairs of the whole matrix."""
        user, item = interaction[self.USER_ID], interaction[self.ITEM_ID]
        target = self.targets(interaction[self.RATING])
        prediction, imputed = self.mf(user, item), self.imputation(user, item)
        weight = self.ips_weights(interaction)
        error = self.pair_losses(prediction, target)
        # The prediction model's objective: the imputed targets are fixed here, not trained.
        imputed_error = self.pair_losses(prediction, self.as_target(imputed.detach()))
        sampled_imputed = self.as_target(self.imputation(sampled_users, sampled_items).detach())
        sampled_error = self.pair_losses(self.mf(sampled_users, sampled_items), sampled_imputed)
        dr_loss = sampled_error.mean() + self.observed_share * ((error - imputed_error) * weight).mean()
        # The imputation model's objective: the prediction (and so the observed error) is fixed here.
        fixed = prediction.detach()
        imputation_error = self.pair_losses(imputed, self.as_target(fixed))
        observed_error = self.pair_losses(fixed, target)
        imputation_loss = self.observed_share * ((observed_error - imputation_error) ** 2 * weight).mean()
        return dr_loss, imputation_loss

    def calculate_loss(self, interaction):
        users, items = self.sample_pairs(len(interaction[self.USER_ID]) * self.all_pairs_ratio)
        return self.dr_losses(interaction, users, items)
