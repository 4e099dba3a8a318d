r"""SplitSASRec
################################################
SASRec whose items, in the input sequence and as candidates, are TwoTowerSplit's item tower over
their side and atom fields instead of a bare id embedding, so a new item is scored from its
features. EndoSASRec without its decoupling terms: the ablation that separates "item features in
both places" from "decoupling".

Reference:
    Wang-Cheng Kang et al. "Self-Attentive Sequential Recommendation." in ICDM 2018 (RecBole's
    SASRec, whose encoder this model keeps); the plugin's design log (endogenous decoupling;
    unpublished).
"""

import torch
import torch.nn as nn
from recbole.model.sequential_recommender import SASRec

from recbole_endo.model.towers import (
    EvaluationCache,
    FeatureEmbedding,
    SplitTower,
    check_endo_fields,
    every_entity,
    initialise_towers,
    mlp,
    parse_endo_fields,
)


class SplitSASRec(EvaluationCache, SASRec):
    r"""SASRec's transformer encoder over item-tower representations; candidates scored by the same
    tower, computed once per evaluation for every item.

    A sequence step is its item's tower output plus SASRec's position embedding (RecBole pads
    sequences at the end, and SASRec's causal attention mask keeps padded steps out of the others,
    whatever they hold); the sequence representation is the encoder's output at the last step, and
    an item's score its dot product with the item's tower output. ``loss_type`` as SASRec's: ``CE`` over all items (each
    training step runs the tower over every item, as SASRec's softmax reads every item
    embedding), or ``BPR`` against RecBole's sampled negative (``train_neg_sample_args``; the tower
    runs over the batch's distinct items).

    Hyper-parameters: SASRec's (``n_layers``, ``n_heads``, ``hidden_size``, ``inner_size``,
    ``hidden_dropout_prob``, ``attn_dropout_prob``, ``hidden_act``, ``layer_norm_eps``,
    ``initializer_range``, ``loss_type``) and the item tower's (``embedding_size``,
    ``mlp_hidden_size``, whose last size is the representation and must equal ``hidden_size``,
    ``dropout_prob``, ``id_path``, ``endo_fields.item``). The encoder is initialised as SASRec's,
    the tower as the plugin's two-tower models'. ``user_side_tower: True`` adds to the sequence
    representation the user's side representation, an MLP (``mlp_hidden_size``) over the
    embeddings of ``endo_fields.user.side`` (demographics; not the user's id: the sequence is the
    user's atom here).

    Unseen items: as in :class:`TwoTowerSplit`, an item with no training interaction (never a
    target nor a step of a training sequence) enters the tower with its id and unseen title words
    as their field's mean trained embedding, so it is ranked by its side fields and known words.
    """

    tower_class = SplitTower
    # BPR ranks each target against RecBole's sampled negative: config.sample_bpr_negatives sees to one.
    bpr_reads_sampled_negative = True
    # The tower looks item features up by id: RecBole need not join them into batches (compat/feature_join.py).
    reads_joined_features = False
    # calculate_loss leaves its components in loss_components: the trainer logs them (recbole_endo.trainer).
    reports_loss_components = True

    @classmethod
    def check_config(cls, config):
        """Fail with a ValueError naming the option on a bad option of the item tower (and the
        user's side representation, an MLP of the same sizes) that needs no dataset; runs check it
        before loading any data. SASRec's own options are RecBole's, taken as given."""
        check_endo_fields(config)
        cls.tower_class.check_config(config, ("item",))
        sizes = config["mlp_hidden_size"]
        if sizes[-1] != config["hidden_size"]:
            raise ValueError(
                f"config option 'mlp_hidden_size' {sizes} ends in the item representation's size, which "
                f"SASRec's encoder reads as 'hidden_size' ({config['hidden_size']}): make them equal"
            )

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        del self.item_embedding  # the item tower replaces SASRec's id embedding
        self.endo_fields = parse_endo_fields(config, dataset)
        self.item_tower = self.tower_class(dataset, "item", self.endo_fields["item"], config)
        initialise_towers(self.item_tower)
        self.user_side = None
        if config["user_side_tower"]:
            side = self.endo_fields["user"]["side"]
            if not side:
                raise ValueError(
                    "config option 'user_side_tower' adds the user's side representation, but "
                    "endo_fields.user.side names no field: name the user's side fields or set user_side_tower: False"
                )
            embedding = FeatureEmbedding(dataset, "user", side, config["embedding_size"], "side")
            sizes = [embedding.output_size, *config["mlp_hidden_size"]]
            self.user_side = nn.Sequential(embedding, nn.Flatten(-2), mlp(sizes, config["dropout_prob"]))
            initialise_towers(self.user_side)
        self.loss_components = {}

    def forward(self, item_seq, item_seq_len, item_emb):
        """The sequence representation ``[batch, hidden_size]`` of ``item_seq`` from its steps'
        item representations ``item_emb`` ``[batch, steps, hidden_size]``."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device).expand_as(item_seq)
        input_emb = self.dropout(self.LayerNorm(item_emb + self.position_embedding(positions)))
        output = self.trm_encoder(input_emb, self.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
        return self.gather_indexes(output, item_seq_len - 1)

    def step_items(self, interaction):
        """The items a training step represents, sorted: every item for CE, else the batch's
        distinct sequence, target and negative items."""
        targets = interaction[self.POS_ITEM_ID]
        if self.loss_type == "CE":
            return torch.arange(self.n_items, device=targets.device)
        parts = [interaction[self.ITEM_SEQ].flatten(), targets, interaction[self.NEG_ITEM_ID]]
        return torch.unique(torch.cat(parts))

    def item_terms(self, ids, target_rows):
        """``(representations of ids, auxiliary terms)``; this model has no auxiliary term."""
        return self.item_tower(ids), None

    def total_loss(self, rank, terms):
        """The loss a step minimises, from the ranking loss and :meth:`item_terms`' terms; its
        components go to ``loss_components`` for the trainer's log."""
        self.loss_components = {"rank": rank.detach()}
        return rank

    def calculate_loss(self, interaction):
        item_seq, targets = interaction[self.ITEM_SEQ], interaction[self.POS_ITEM_ID]
        ids = self.step_items(interaction)
        target_rows = torch.searchsorted(ids, targets)
        reprs, terms = self.item_terms(ids, target_rows)
        seq_output = self.sequence_output(interaction, reprs[torch.searchsorted(ids, item_seq)])
        if self.loss_type == "CE":
            rank = self.loss_fct(seq_output @ reprs.T, targets)  # ids are every item: column i is item i
        else:
            negatives = reprs[torch.searchsorted(ids, interaction[self.NEG_ITEM_ID])]
            rank = self.loss_fct((seq_output * reprs[target_rows]).sum(-1), (seq_output * negatives).sum(-1))
        return self.total_loss(rank, terms)

    def all_item_representations(self):
        """The item tower over every item; in eval mode once per evaluation (:class:`EvaluationCache`)."""
        return self.cached("item", lambda: every_entity(self.item_tower, self.n_items, self.device))

    def sequence_output(self, interaction, step_reprs):
        """The representation of each of the interaction's sequences from its steps' item
        representations; with ``user_side_tower``, plus the user's side representation."""
        output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], step_reprs)
        if self.user_side is not None:
            output = output + self.user_side(interaction[self.USER_ID])
        return output

    def predict(self, interaction):
        reprs = self.all_item_representations()
        seq_output = self.sequence_output(interaction, reprs[interaction[self.ITEM_SEQ]])
        return (seq_output * reprs[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        reprs = self.all_item_representations()
        return self.sequence_output(interaction, reprs[interaction[self.ITEM_SEQ]]) @ reprs.T
