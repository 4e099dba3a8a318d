r"""SideProfile: the content-based floor of sequential recommendation.

Reference: the vector-space user profile of content-based filtering (M. J. Pazzani and D.
Billsus, "Content-Based Recommendation Systems", in The Adaptive Web, LNCS 4321, 2007): a user
is the sum of the feature vectors of the items they took, and items are ranked by their cosine
to it.
"""

from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import FeatureType, InputType, ModelType

from recbole_endo.model.towers import check_endo_fields, check_fields, parse_endo_fields
from recbole_endo.options import number_option


class SideProfile(SequentialRecommender):
    r"""Scores an item by the cosine between its side fields' multi-hot vector (one entry per
    token of each token or token_seq field of ``endo_fields.item.side``, e.g. its genres; float
    fields are left out) and the sum of those vectors over the last ``profile_length`` items of
    the sequence (0: the whole sequence).

    It needs no training (``trainer_type``: RecBole's traditional trainer, one pass of a zero
    loss; its ``type`` stays sequential so that RecBole builds the sequences). Nothing is learned
    from ids, so a new item is scored as a trained one: the floor a sequential model must beat
    on new items with the same side fields. Items with the same side tokens tie.
    """

    input_type = InputType.POINTWISE
    type = ModelType.SEQUENTIAL
    # RecBole picks a trainer by the model's type; sequential would train until early stopping.
    trainer_type = ModelType.TRADITIONAL
    reads_joined_features = False

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the model that needs no
        dataset; runs check it before loading any data. The side fields are checked with the
        dataset, when the model is built."""
        number_option(config, "profile_length", 0, integer=True)
        check_endo_fields(config)

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        self.profile_length = config["profile_length"]
        side = parse_endo_fields(config, dataset)["item"]["side"]
        check_fields(dataset, "item", "side", side)
        counted = [field for field in side if dataset.field2type[field] in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)]
        if not counted:
            raise ValueError(
                f"SideProfile counts the tokens of endo_fields.item.side, which names no token or "
                f"token_seq field ({side}): name the item's categorical side fields (genres, say)"
            )
        if len(counted) < len(side):
            left_out = sorted(set(side) - set(counted))
            getLogger().info(f"SideProfile counts {counted}; it leaves out the side fields with no tokens, {left_out}")
        table = dataset.get_item_feature()
        blocks = []
        for field in counted:
            values = table[field].reshape(len(table), -1)
            hot = torch.zeros(len(table), dataset.num(field)).scatter_(1, values, 1.0)
            blocks.append(hot[:, 1:])  # column 0 is padding: an empty cell or a missing value
        self.register_buffer("item_side", torch.cat(blocks, dim=1), persistent=False)
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))  # RecBole's optimiser needs a parameter

    def calculate_loss(self, interaction):
        return self.fake_loss.sum() * 0

    def profile(self, interaction):
        """``[batch, side tokens]``: the side vectors summed over each sequence's last
        ``profile_length`` steps (RecBole pads sequences at the end)."""
        item_seq, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        steps = torch.arange(item_seq.size(1), device=item_seq.device)
        first = (lengths - self.profile_length).clamp(min=0) if self.profile_length else torch.zeros_like(lengths)
        kept = (steps >= first.unsqueeze(1)) & (steps < lengths.unsqueeze(1))
        return (self.item_side[item_seq] * kept.unsqueeze(-1)).sum(1)

    def predict(self, interaction):
        items = F.normalize(self.item_side[interaction[self.ITEM_ID]], dim=-1)
        return (F.normalize(self.profile(interaction), dim=-1) * items).sum(-1)

    def full_sort_predict(self, interaction):
        return F.normalize(self.profile(interaction), dim=-1) @ F.normalize(self.item_side, dim=-1).T
