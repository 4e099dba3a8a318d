"""recbole_endo: endogenous decoupling of side and atom representations, as a RecBole plugin.

Importing the package registers its models with RecBole (see :func:`recbole_endo.compat.registration.register`).
"""

from recbole_endo.compat.registration import register
from recbole_endo.config import Config
from recbole_endo.model import MODELS, EndoDecouple, EndoSASRec, SplitSASRec, TwoTowerConcat, TwoTowerSplit
from recbole_endo.registry import get_model
from recbole_endo.trainer import get_trainer

__version__ = "0.1.0"

register()
