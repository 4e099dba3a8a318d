from recbole_endo.model.endo_decouple import EndoDecouple
from recbole_endo.model.item_mean_rating import ItemMeanRating
from recbole_endo.model.two_tower_concat import TwoTowerConcat
from recbole_endo.model.two_tower_split import TwoTowerSplit

MODELS = {model.__name__: model for model in (EndoDecouple, TwoTowerConcat, TwoTowerSplit, ItemMeanRating)}
