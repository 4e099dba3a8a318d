"""MFIPS: matrix factorisation trained on inverse-propensity-scored rating errors.

Reference: Tobias Schnabel, Adith Swaminathan, Ashudeep Singh, Navin Chandak and Thorsten
Joachims, "Recommendations as Treatments: Debiasing Learning and Evaluation", ICML 2016 (MF-IPS).

``rating_loss`` (MF's option): ``squared`` (default) is the paper's IPS-weighted squared error on
the ratings; ``bce`` the 1/p-weighted binary cross-entropy on binarised ratings of the doubly
robust papers' public code (e.g. CrazyDumpling/CDR_CIKM2023 ``baseline/MF.py``, ``MF_IPS``), here
with the paper's 1/(U I) normalisation (their code averages the weighted terms over the batch).
"""

from recbole_endo.model.mf import MF
from recbole_endo.model.propensity import (
    check_propensity_options,
    item_counts,
    observed_share_propensity,
    propensity_from_config,
)


class MFIPS(MF):
    r"""MF (the same biased model, :class:`~recbole_endo.model.mf.MF`) trained on the paper's IPS
    estimate of the mean error over the whole rating matrix:

    .. math:: \hat R_{IPS} = \frac{1}{U \cdot I} \sum_{(u,i): O_{ui} = 1} \frac{e_{ui}}{P_{ui}}

    with MF's per-pair loss :math:`e_{ui}` of ``rating_loss``: :math:`(r_{ui} - \hat r_{ui})^2`
    (``squared``, the paper's) or the binary cross-entropy of :math:`\sigma(\hat r_{ui})` against
    the binarised rating (``bce``, the doubly robust papers' code).

    Normalisation: the paper's IPS (the sum over the whole matrix, :math:`U \cdot I` pairs), not
    SNIPS (dividing by the sum of the weights instead): IPS is the estimator the paper trains
    MF-IPS on and the one that is unbiased for true propensities; SNIPS's normaliser is the
    paper's variance-reduction alternative for evaluation. A batch ``B`` of the N training
    ratings estimates the sum without bias by :math:`\frac{N}{U I} \cdot \frac{1}{|B|}
    \sum_{B} e_{ui} / P_{ui}`, the loss returned. With propensities that are probabilities
    (the sum of 1/P over the observed pairs is about U I) the loss is on the scale of MF's.

    Propensities (``propensity``, :mod:`recbole_endo.model.propensity`): ``popularity`` (default)
    P_ui = n_i / U, the share of the users who rated item i in the training split, the maximum
    likelihood estimate of P(O=1) when exposure depends on the item only (a probability, so the
    1/(U I) normalisation holds: Saito et al.'s relative (n_i / max n)^eta is not one);
    ``file``: a dataset's own matrix by raw id (``propensity_file``, e.g. Coat's
    propensities.ascii, learned on all of train.ascii, of which the plugin trains on 90 %);
    ``naive_bayes``: the paper's § 5 estimator, P_ui = P(O=1 | r_ui) = P(r | O=1) P(O=1) / P(r),
    P(r | O=1) and P(O=1) = N / (U I) from the training ratings, P(r) from the dataset's uniformly
    exposed slice ``<dataset>.uniform.inter`` (a share of the random test ratings that the Coat and
    Yahoo! R3 converters write with ``--uniform_slice`` and leave out of the test); each training
    pair is weighed by its rating's propensity. ``propensity_clip`` floors P at a value (default 0:
    the paper's unclipped estimator). Options: ``recbole_endo/properties/model/MFIPS.yaml``.
    """

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        check_propensity_options(config, cls.__name__)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        items = dataset.inter_feat[self.ITEM_ID]
        users = self.n_users - 1  # internal id 0 is RecBole's padding
        self.propensity = propensity_from_config(
            config, dataset, lambda: observed_share_propensity(item_counts(items, self.n_items), users)
        )
        # N / (U I): the share of the matrix the training ratings observe.
        self.observed_share = len(items) / (users * (self.n_items - 1))

    def ips_weights(self, interaction):
        """1 / P_ui of the batch's pairs (naive Bayes looks P up by the pair's rating)."""
        return 1.0 / self.propensity(interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.RATING])

    def calculate_loss(self, interaction):
        return self.observed_share * (self.errors(interaction) * self.ips_weights(interaction)).mean()
