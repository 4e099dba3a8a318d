"""Feature towers: the configured atom and side fields of users and items, embedded by internal id.

``endo_fields`` (config) names, per entity (``user``, ``item``), its ``atom`` fields (identity-like,
popularity-biased: ids, titles) and its ``side`` fields (generalisable: genres, demographics).
Unset, it is derived from the loaded feature fields (:func:`derive_endo_fields`).

The towers, shared by the plugin's models: :class:`SplitTower` (side and atom branches joined by
an output layer) and :class:`EndoTower` (a split tower with the design's SSL views and heads).
"""

import math
import os
from logging import getLogger

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.init import xavier_normal_initialization
from recbole.model.layers import MLPLayers
from recbole.utils import FeatureSource, FeatureType

from recbole_endo.data.interactions import trained_entities
from recbole_endo.model.losses import complementary_field_masks, orthogonal_component
from recbole_endo.options import number_option, sizes_option

ENTITIES = ("user", "item")
FIELD_GROUPS = ("atom", "side")
ENTITY_SOURCES = {
    "user": (FeatureSource.USER, FeatureSource.USER_ID),
    "item": (FeatureSource.ITEM, FeatureSource.ITEM_ID),
}


REPR_CHUNK = 65536  # ids per tower call when every user's or item's representation is computed

# A token field with at least this many distinct values per entity (a token_seq field: distinct
# sequences) names entities rather than describing them: an atom.
ATOM_DISTINCT_SHARE = 0.5


def derive_endo_fields(dataset):
    """``endo_fields`` from the loaded feature fields of each entity's file (``.user``, ``.item``):
    the id field and every identity-like token or token_seq field, with at least
    ``ATOM_DISTINCT_SHARE`` distinct values (whole sequences) per entity (a zip code, a title),
    are atoms; the other token fields and every float field are side. Without a feature file an
    entity's only field, its id, is an atom."""
    derived = {}
    for entity in ENTITIES:
        id_field = dataset.uid_field if entity == "user" else dataset.iid_field
        table = dataset.get_user_feature() if entity == "user" else dataset.get_item_feature()
        entities = max(len(table) - 1, 1)  # row 0 is RecBole's padding entity
        derived[entity] = {"atom": [id_field], "side": []}
        # Not the neg_<field> copies RecBole registers for sampled negatives: they are no table column.
        for field in (f for f in dataset.fields(source=[ENTITY_SOURCES[entity][0]]) if f in table.columns):
            field_type = dataset.field2type[field]
            if field_type in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                values = table[field][1:]
                distinct = len(torch.unique(values, dim=0)) if field_type == FeatureType.TOKEN_SEQ else len(values.unique())
                group = "atom" if distinct >= ATOM_DISTINCT_SHARE * entities else "side"
            else:
                group = "side"
            derived[entity][group].append(field)
    return derived


def check_endo_fields(config):
    """Fail with a ValueError naming the option unless ``config['endo_fields']`` is unset (derived
    from the dataset, :func:`parse_endo_fields`) or ``{user|item: {atom|side: [field, ...]}}``
    naming a field for each entity. Whether the fields are loaded is the dataset's to say
    (:func:`check_fields`)."""
    endo_fields = config["endo_fields"]
    if endo_fields is None:
        return
    if not isinstance(endo_fields, dict):
        raise ValueError(
            "config option 'endo_fields' must map 'user' and 'item' to {atom: [...], side: [...]}, "
            f"or be left unset to derive it from the dataset's feature fields; got {endo_fields!r}"
        )
    for entity in ENTITIES:
        groups = endo_fields.get(entity)
        if not isinstance(groups, dict):
            raise ValueError(f"config option 'endo_fields.{entity}' must be a dict with 'atom' and 'side' lists")
        unknown = set(groups) - set(FIELD_GROUPS)
        if unknown:
            raise ValueError(f"config option 'endo_fields.{entity}' has unknown keys {sorted(unknown)}; use 'atom' and 'side'")
        for group in FIELD_GROUPS:
            fields = group_fields(groups, group)
            if not isinstance(fields, (list, tuple)) or not all(isinstance(field, str) for field in fields):
                raise ValueError(f"config option 'endo_fields.{entity}.{group}' must be a list of field names")
        if not any(group_fields(groups, group) for group in FIELD_GROUPS):
            raise ValueError(f"config option 'endo_fields.{entity}' names no field")


def group_fields(groups, group):
    """The fields that one entity's ``endo_fields`` ``groups`` name in ``group``: unset is none,
    and a single field may be named without a list."""
    fields = groups.get(group) or []
    return [fields] if isinstance(fields, str) else fields


def parse_endo_fields(config, dataset):
    """``config['endo_fields']`` (checked by :func:`check_endo_fields`) as ``{user|item: {atom|side:
    [field, ...]}}``; unset, derived from ``dataset`` (:func:`derive_endo_fields`), logged and
    stored in the config, so the run's checkpoint rebuilds the same towers."""
    endo_fields = config["endo_fields"]
    if endo_fields is None:
        endo_fields = derive_endo_fields(dataset)
        config["endo_fields"] = endo_fields
        getLogger().info(f"endo_fields not set; derived from the loaded features (towers.py): {endo_fields}")
    return {
        entity: {group: list(group_fields(endo_fields[entity], group)) for group in FIELD_GROUPS} for entity in ENTITIES
    }


def check_fields(dataset, entity, group, fields):
    """Fail, naming the field and the file it should come from, unless each field is loaded."""
    suffix = entity
    path = os.path.join(dataset.dataset_path, f"{dataset.dataset_name}.{suffix}")
    for field in fields:
        if field not in dataset.field2type:
            where = "which is not loaded" if os.path.isfile(path) else "which does not exist"
            raise ValueError(
                f"endo_fields.{entity}.{group} names field '{field}', but the dataset has no such field: "
                f"it must come from '{path}' ({where}); list it under load_col['{suffix}']"
            )
        if dataset.field2source[field] not in ENTITY_SOURCES[entity]:
            raise ValueError(
                f"endo_fields.{entity}.{group} names field '{field}', which is loaded from "
                f"'{dataset.field2source[field].value}' data, not from '{path}'"
            )


def module_name(field):
    """``field`` as a name torch takes for a submodule or buffer: the field itself unless it holds a
    '.' or names an attribute of a module (``type``, ``float``, ``half``, ...), which torch refuses;
    then ``field:`` and the field with each '.' as ':'. Checkpoints keep the other fields' keys."""
    if "." in field or hasattr(nn.ModuleDict, field):
        return "field:" + field.replace(".", ":")
    return field


class FeatureEmbedding(nn.Module):
    r"""Embeds fields of the user or item feature table for a batch of internal ids.

    token → embedding; token_seq → mean of the embeddings of its non-padding tokens (an empty cell
    gives zeros); float / float_seq → linear map of the value(s). The feature table is held as
    non-persistent buffers: it moves to the model's device once and stays out of checkpoints.

    Every token field keeps an ``nn.Embedding`` of its own (its initialisation and checkpoint
    keys), but a batch looks all of them up at once: the fields' tables, less their padding rows,
    are concatenated behind one shared zero row, each entity's non-padding tokens are stored as
    one bag per field, and one ``embedding_bag`` call averages every bag of the batch. A padded
    ``[batch, tokens]`` lookup per field with a masked mean costs several times as much (most
    title cells are short and padded to the longest), in the forward pass and its gradient.

    Unseen tokens: ``dataset`` is the training split. A token (an id, a title word, a zip code)
    that occurs in the features of no entity with a training interaction has learned nothing
    about users' tastes: an unseen user's tokens keep their random initialisation, and an unseen
    item's are only pushed down as RecBole's negatives, which it samples from all items. In eval
    mode such a token is embedded as the mean embedding of the seen tokens, the expected
    contribution of a token of its field, so a cold entity is ranked by what it shares with
    trained ones (side values, known title words) plus an average atom. When every entity has a
    training interaction every token is seen and nothing changes; training is unchanged.

    Output: ``[*ids.shape, len(fields), embedding_size]``.
    """

    def __init__(self, dataset, entity, fields, embedding_size, group="atom"):
        super().__init__()
        check_fields(dataset, entity, group, fields)
        table = dataset.get_user_feature() if entity == "user" else dataset.get_item_feature()
        trained = trained_entities(dataset, entity)
        self.fields = list(fields)
        self.token_fields, self.float_fields = [], []
        self.encoders = nn.ModuleDict()
        token_values = []
        for field in self.fields:
            field_type = dataset.field2type[field]
            values = table[field]
            if field_type in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                self.encoders[module_name(field)] = nn.Embedding(dataset.num(field), embedding_size, padding_idx=0)
                seen = torch.zeros(dataset.num(field), dtype=torch.bool)
                seen[values[trained].flatten()] = True
                seen[0] = True  # padding (an empty cell or a missing value) is not a token: kept as is
                self.register_buffer(f"seen_{module_name(field)}", seen, persistent=False)
                self.token_fields.append(field)
                token_values.append(values.reshape(len(values), -1))
            elif field_type in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ):
                values = values.float().reshape(len(values), -1)
                self.encoders[module_name(field)] = nn.Linear(values.shape[1], embedding_size)
                self.float_fields.append(field)
                self.register_buffer(f"table_{module_name(field)}", values, persistent=False)
            else:
                raise ValueError(f"field '{field}' has type {field_type.value}, which a feature tower cannot embed")
        if token_values:
            self.register_bags(token_values)
        token_columns = torch.tensor([field in self.token_fields for field in self.fields])
        self.register_buffer("token_columns", token_columns, persistent=False)
        self.output_size = len(self.fields) * embedding_size

    def encoder(self, field):
        """The field's ``nn.Embedding`` (a token field) or ``nn.Linear`` (a float field)."""
        return self.encoders[module_name(field)]

    def seen(self, field):
        """A token field's mask of the tokens seen in training (index 0, padding, counts as seen)."""
        return getattr(self, f"seen_{module_name(field)}")

    def table(self, field):
        """A float field's values, a row per entity ``[entities, width]``."""
        return getattr(self, f"table_{module_name(field)}")

    def register_bags(self, token_values):
        """Buffers of the token fields' bags: ``bag_tokens``, every entity's non-padding tokens as
        rows of :meth:`token_table` (entity by entity, field by field); ``bag_lengths``
        ``[entities, token fields]``, the tokens of each bag; ``bag_starts``, where each entity's
        tokens begin in ``bag_tokens``."""
        shifted, offset = [], 1  # row 0 of the concatenated table is the shared padding row
        for field, values in zip(self.token_fields, token_values):
            shifted.append(torch.where(values != 0, values + offset - 1, 0))
            offset += self.encoder(field).num_embeddings - 1
        tokens = torch.cat(shifted, dim=1)
        lengths = torch.stack([(values != 0).sum(1) for values in shifted], dim=1)
        counts = lengths.sum(1)
        self.register_buffer("bag_tokens", tokens[tokens != 0], persistent=False)
        self.register_buffer("bag_lengths", lengths, persistent=False)
        self.register_buffer("bag_starts", counts.cumsum(0) - counts, persistent=False)

    def seen_mean(self, field):
        """The mean embedding of the token field's seen tokens: what an unseen token embeds as in
        eval mode (no seen token: zeros, as an empty cell)."""
        seen = self.seen(field)[1:]
        return self.encoder(field).weight[1:][seen].sum(0) / max(int(seen.sum()), 1)

    def token_table(self):
        """The token fields' tables concatenated behind one zero row, each without its padding row;
        in eval mode an unseen token's row is the mean of its field's seen rows."""
        rows = []
        for field in self.token_fields:
            weight = self.encoder(field).weight[1:]
            if not self.training:
                seen = self.seen(field)[1:]
                weight = torch.where(seen.unsqueeze(-1), weight, self.seen_mean(field))
            rows.append(weight)
        return torch.cat([rows[0].new_zeros(1, rows[0].shape[1]), *rows])

    def as_unseen(self, embedded, rows):
        """``embedded`` (this module's output) with the token fields of the entities marked in
        ``rows`` (a bool mask over its leading dimensions) replaced by their field's
        :meth:`seen_mean`: those entities embedded as one whose every token is unseen, as a new
        entity's id is in eval mode. Float fields keep their values."""
        fill = torch.stack(
            [self.seen_mean(field) if field in self.token_fields else embedded.new_zeros(embedded.shape[-1]) for field in self.fields]
        )
        return torch.where((rows.unsqueeze(-1) & self.token_columns).unsqueeze(-1), fill, embedded)

    def pool_tokens(self, ids):
        """``[len(ids), token fields, embedding_size]``: each bag's mean row of :meth:`token_table`."""
        lengths = self.bag_lengths[ids]
        counts = lengths.sum(1)
        total = int(counts.sum())
        # The position in bag_tokens of each token of the batch: its entity's tokens lie at
        # bag_starts[id] onwards, and the batch's lie at (tokens of earlier rows) onwards.
        shift = (self.bag_starts[ids] - (counts.cumsum(0) - counts)).repeat_interleave(counts, output_size=total)
        tokens = self.bag_tokens[torch.arange(total, device=ids.device) + shift]
        bags = lengths.flatten()
        pooled = F.embedding_bag(tokens, self.token_table(), bags.cumsum(0) - bags, mode="mean")
        return pooled.view(len(ids), len(self.token_fields), -1)

    def forward(self, ids):
        flat = ids.reshape(-1)
        pooled = self.pool_tokens(flat) if self.token_fields else None
        if self.float_fields:
            columns = dict(zip(self.token_fields, pooled.unbind(1))) if self.token_fields else {}
            for field in self.float_fields:
                columns[field] = self.encoder(field)(self.table(field)[flat])
            pooled = torch.stack([columns[field] for field in self.fields], dim=1)
        return pooled.view(*ids.shape, *pooled.shape[1:])


class FeatureTower(nn.Module):
    """Base of the plugin's towers. With ``id_path: True`` the entity's id is also embedded
    straight into the representation space (size ``mlp_hidden_size[-1]``) and added to the
    tower's output, as in matrix factorisation: the lever tried for the towers' warm-accuracy gap
    (an MLP over the id alone scored 0.258 test NDCG@10 on ml-100k against BPR's 0.293; with the
    id path the gap stays, README). An unseen id (a cold entity) adds the mean trained id
    embedding (:class:`FeatureEmbedding`), so cold entities are still told apart by their features."""

    @classmethod
    def check_config(cls, config, entities):
        """Fail with a ValueError naming the option on a bad option of the tower that needs no
        dataset; ``entities``: the entities the model builds this tower for."""
        number_option(config, "embedding_size", 1, integer=True)
        sizes_option(config, "mlp_hidden_size")
        number_option(config, "dropout_prob", 0, 1, high_open=True)

    def __init__(self, dataset, entity, config):
        super().__init__()
        self.id_embedding = None
        if config["id_path"]:
            id_field = dataset.uid_field if entity == "user" else dataset.iid_field
            self.id_embedding = FeatureEmbedding(dataset, entity, [id_field], config["mlp_hidden_size"][-1])

    def add_id_path(self, ids, representation):
        if self.id_embedding is None:
            return representation
        return representation + self.id_embedding(ids).squeeze(-2)


class SplitTower(FeatureTower):
    """concat(MLP_side(side embeddings), MLP_atom(atom embeddings)) → output layer.

    The output layer is linear, or an MLP when ``output_hidden_sizes`` is given. A group with no
    configured field has no branch.

    ``atom_dropout``: in training, each row's entity has, with this probability, its atom fields
    embedded as unseen (:meth:`FeatureEmbedding.as_unseen`), as a new entity's are at evaluation,
    so the side branch learns to rank an entity whose atoms say nothing (DropoutNet's input
    dropout, Volkovs et al., NeurIPS 2017). A model that runs a tower once over every item per
    step (the sequential models' CE) drops an item in its history steps and as a candidate alike.
    """

    @classmethod
    def check_config(cls, config, entities):
        """The base's checks, and ``atom_dropout`` in [0, 1], refused beside ``id_path``, whose id
        embedding would tell the dropped entities apart again."""
        super().check_config(config, entities)
        atom_dropout = number_option(config, "atom_dropout", 0, 1)
        if atom_dropout and config["id_path"]:
            trained = " and ".join(f"{entity}s" for entity in entities)
            raise ValueError(
                f"config option 'atom_dropout' ({atom_dropout}) embeds some training {trained} as new ones, "
                "but id_path: True adds each one's own id embedding past its atoms: set atom_dropout: 0 or id_path: False"
            )

    def __init__(self, dataset, entity, fields, config, output_hidden_sizes=()):
        super().__init__(dataset, entity, config)
        embedding_size, hidden_sizes, rate = config["embedding_size"], config["mlp_hidden_size"], config["dropout_prob"]
        groups = [group for group in FIELD_GROUPS if fields[group]]
        self.embeddings = nn.ModuleDict(
            {group: FeatureEmbedding(dataset, entity, fields[group], embedding_size, group) for group in groups}
        )
        self.mlps = nn.ModuleDict(
            {group: mlp([self.embeddings[group].output_size, *hidden_sizes], rate) for group in groups}
        )
        size = hidden_sizes[-1]
        self.output = mlp([len(groups) * size, *output_hidden_sizes, size], rate)
        self.atom_dropout = config["atom_dropout"]

    def embed(self, ids):
        """Field embeddings per group: ``{group: [batch, fields, embedding_size]}``, with
        ``atom_dropout`` applied in training."""
        embedded = {group: embedding(ids) for group, embedding in self.embeddings.items()}
        if self.training and self.atom_dropout and "atom" in embedded:
            dropped = torch.rand(ids.shape, device=ids.device) < self.atom_dropout
            embedded["atom"] = self.embeddings["atom"].as_unseen(embedded["atom"], dropped)
        return embedded

    def branch(self, group, embedded):
        return self.mlps[group](embedded.flatten(-2))

    def combine(self, ids, branches):
        """The representation of ``ids`` from their branches' outputs (and the id path)."""
        return self.add_id_path(ids, self.output(torch.cat([branches[group] for group in self.embeddings], dim=-1)))

    def forward(self, ids):
        return self.combine(ids, {group: self.branch(group, embedded) for group, embedded in self.embed(ids).items()})


# rank_representation side_orthogonal: |s + a-perp| = sqrt(2), so a scale of 2 lets scores start
# within ±8, a range in which BPR's sigmoid is neither flat nor saturated.
RANK_SCALE_INIT = 2.0


class EndoTower(SplitTower):
    """A split tower with the design's self-supervised parts: two stochastic views of a group's field
    embeddings, and one projection head per SSL task (side, atom), not shared
    (``share_projection_heads: True``: one head for both, the ablation of the design log's v2).

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
                f"endo_fields.{entity}.{missing[0]} names no field, so the {entity} tower's "
                "decoupling terms (stage-1, side SSL, atom SSL) are off"
            )
            return
        self.ssl_dropout = config["ssl_dropout"]
        self.field_views = config["ssl_views"] == "fields"
        size = config["mlp_hidden_size"][-1]
        heads = [mlp([size, size, config["projection_size"]]) for _ in FIELD_GROUPS]
        if config["share_projection_heads"]:  # the design log's first version, before its v2 fix
            heads = [heads[0]] * len(FIELD_GROUPS)
        self.heads = nn.ModuleDict(dict(zip(FIELD_GROUPS, heads)))
        table = dataset.get_user_feature() if entity == "user" else dataset.get_item_feature()
        for group in FIELD_GROUPS:
            values = torch.cat([table[field].double().reshape(len(table), -1) for field in fields[group]], dim=1)
            self.register_buffer(f"{group}_value_class", values.unique(dim=0, return_inverse=True)[1], persistent=False)

    def combine(self, ids, branches):
        if not self.side_orthogonal_ranking:
            return super().combine(ids, branches)
        side, atom = (F.normalize(branches[group], dim=-1) for group in ("side", "atom"))
        representation = self.rank_log_scale.exp() * (side + self.atom_log_weight.exp() * orthogonal_component(atom, side))
        return self.add_id_path(ids, representation)

    def value_classes(self, group, ids):
        """The class of each of ``ids`` among the entities by their ``group`` fields' values: two
        entities have the same class when every field of the group has the same value (an atom
        group with the id field: when they are the same entity)."""
        return getattr(self, f"{group}_value_class")[ids]

    def views(self, group, embedded):
        """Two stochastic views of each row of a group's field embeddings ``[rows, fields, size]``:
        ``[2, rows, fields, size]``."""
        rows, fields = embedded.shape[:2]
        if self.field_views and fields > 1:
            return embedded * complementary_field_masks(rows, fields, embedded.device).unsqueeze(-1)
        return dropout(embedded.expand(2, *embedded.shape), self.ssl_dropout)

    def branch_with_views(self, group, embedded, view_rows):
        """``(output, views)``: the group's branch on each row of ``embedded`` and, normalised, on
        two :meth:`views` of its rows ``view_rows`` ``[2, len(view_rows), size]``, all in one pass."""
        views = self.views(group, embedded.index_select(0, view_rows)).flatten(0, 1)
        output = self.branch(group, torch.cat([embedded, views]))
        return output[: len(embedded)], F.normalize(output[len(embedded):].unflatten(0, (2, -1)), dim=-1)


def every_entity(tower, count, device):
    """``tower`` over the internal ids ``0 .. count - 1``, in chunks: the tower's intermediates for
    millions of ids at once need not fit."""
    ids = torch.arange(count, device=device)
    return torch.cat([tower(chunk) for chunk in ids.split(REPR_CHUNK)])


def initialise_towers(module):
    """RecBole's Xavier initialisation of ``module``'s layers, with every padding row of its
    embeddings kept at zero: RecBole's initialisation draws every row, but a missing token value
    (padding id 0) must embed as zeros, and ``padding_idx`` keeps it there in training."""
    module.apply(xavier_normal_initialization)
    for layer in module.modules():
        if isinstance(layer, nn.Embedding) and layer.padding_idx is not None:
            with torch.no_grad():
                layer.weight[layer.padding_idx].zero_()


class EvaluationCache:
    """For an ``nn.Module`` model whose towers' output over every user or item serves a whole
    evaluation: :meth:`cached` computes it once in eval mode and keeps it until the next
    ``train()`` or weight load. RecBole switches modes around every weight change (a training
    epoch, loading the best checkpoint), so a cached value lives exactly as long as one evaluation."""

    def train(self, mode=True):
        self._evaluation_cache = {}
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._evaluation_cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def cached(self, key, compute):
        """``compute()``; in eval mode, its value from the first call of this evaluation."""
        if self.training:
            return compute()
        cache = self.__dict__.setdefault("_evaluation_cache", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]


def dropout(inputs, rate):
    """Inverted dropout in training: each entry zeroed with probability ``rate`` (below 1, rounded
    to a multiple of 1/65536), the rest scaled so that the expectation is the input. Each entry's
    draw is 16 random bits, four from one 64-bit integer draw, compared with the rate: a quarter
    of the draws of a uniform float per entry: drawing the masks took 18 % of a tuned
    EndoDecouple step on ml-100k on a CPU, and its epoch is 8 % faster so (torch's Bernoulli
    draws, in its own dropout, are slower still)."""
    if not rate:
        return inputs
    count = inputs.numel()
    dropped = min(round(rate * 65536), 65535)
    # The full int64 range: random_() without one leaves each draw's sign bit 0, and one word in four biased.
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=inputs.device).random_(-(2**63), 2**63 - 1)
    keep = draws.view(torch.int16)[:count].view(inputs.shape).ge(dropped - 32768)
    return inputs * keep.to(inputs.dtype).mul_(65536 / (65536 - dropped))


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask as :func:`dropout` does."""

    def forward(self, inputs):
        return dropout(inputs, self.p) if self.training else inputs


def mlp(sizes, dropout_rate=0.0):
    """ReLU MLP whose last layer is linear, so its output can take any sign in a dot product;
    RecBole's ``MLPLayers`` with its dropout layers drawn as :class:`Dropout` draws them."""
    layers = MLPLayers(list(sizes), dropout=dropout_rate, activation="relu", last_activation=False)
    for index, layer in enumerate(layers.mlp_layers):
        if isinstance(layer, nn.Dropout):
            layers.mlp_layers[index] = Dropout(layer.p)
    return layers
