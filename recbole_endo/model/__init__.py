"""The plugin's models, one per file, and their shared pieces: the two-tower frame and ranking
loss (``feature_recommender``), the feature towers (``towers``), the losses (``losses``) and the
decoupling terms (``decoupling``). The general recommenders share the two-tower frame; the
sequential ones (EndoSASRec, SplitSASRec) put the item tower under SASRec's encoder; SideProfile
is their content-based floor."""

from recbole_endo.model.dice import DICE
from recbole_endo.model.endo_decouple import EndoDecouple
from recbole_endo.model.endo_sasrec import EndoSASRec
from recbole_endo.model.item_mean_rating import ItemMeanRating
from recbole_endo.model.macr import MACR
from recbole_endo.model.mf import MF
from recbole_endo.model.mf_dr import MFDR
from recbole_endo.model.mf_ips import MFIPS
from recbole_endo.model.pda import PDA
from recbole_endo.model.rel_mf import RelMF
from recbole_endo.model.side_profile import SideProfile
from recbole_endo.model.split_sasrec import SplitSASRec
from recbole_endo.model.two_tower_concat import TwoTowerConcat
from recbole_endo.model.two_tower_split import TwoTowerSplit

MODELS = {
    model.__name__: model
    for model in (EndoDecouple, TwoTowerConcat, TwoTowerSplit, ItemMeanRating, EndoSASRec, SplitSASRec, SideProfile)
    + (DICE, PDA, MACR)  # popularity debiasing (issue 34)
    + (MF, MFIPS, MFDR, RelMF)  # propensity debiasing and its MF backbone (issue 34)
}
