"""Retrieval: a trained checkpoint's users and items as vectors in faiss indexes, and top-k
recommendations from them for known users, for new users given by their side fields, and over new
items added from a RecBole ``.item`` file without retraining (docs/retrieval.md).

A model exports when it scores a user and an item by the inner product of one user vector and
one item vector, so that an inner-product index ranks as the model's ``full_sort_predict`` does:

- the plugin's two-tower models (TwoTowerSplit, TwoTowerConcat, EndoDecouple): user tower · item
  tower (``FeatureTowerRecommender.all_representations``). Their towers also embed a new user or
  item from raw feature values, as they embed a cold one (``FeatureEmbedding``: in eval mode an
  unseen token, a new id included, is its field's mean seen token);
- RecBole's BPR (``user_embedding · item_embedding``) and LightGCN (the propagated embeddings of
  its ``forward()``), the plugin's DICE (interest and conformity concatenated) and its biased MF
  family (MF, MFIPS, MFDR, RelMF: ``[p_u, 1] · [q_i, b_i]`` plus the user's offset
  ``b_u + b``). These embed users and items by id alone: no new user or item.

Any other model is refused when its checkpoint is read, before the data loads, with the reason
(:data:`REFUSED`, :func:`exported_kind`).

``python -m recbole_endo.retrieval``:

- ``export CHECKPOINT OUT_DIR``: the folder of :meth:`Retriever.save` (vectors, id maps with
  titles, the users' seen items per split, metadata, an exact ``IndexFlatIP`` and, for a large
  catalogue, an approximate index: :func:`approximate_kind`), written to a temporary folder that
  then takes OUT_DIR's place;
- ``recommend OUT_DIR --user RAW_ID -k 10`` (or ``--feature FIELD=VALUE ...`` for a new user):
  the top-k raw item ids with their scores and titles;
- ``add-items OUT_DIR ITEM_FILE``: the items of a RecBole ``.item`` file embedded by the item
  tower and added to the indexes, OUT_DIR replaced as a whole.
"""

import argparse
import csv
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import sys
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch
from recbole.model.general_recommender import BPR, LightGCN
from recbole.utils import FeatureType, ModelType

from recbole_endo.compat.checkpoint import read_checkpoint
from recbole_endo.data.interactions import evaluation_split, trained_entities
from recbole_endo.experiments.provenance import git_commit
from recbole_endo.files import dataset_folder, read_atomic_file
from recbole_endo.model import DICE, MF, MFDR, MFIPS, MODELS, RelMF
from recbole_endo.model.feature_recommender import FeatureTowerRecommender
from recbole_endo.model.towers import ENTITIES, EndoTower, FeatureEmbedding
from recbole_endo.registry import get_model

FORMAT = "recbole_endo.retrieval/1"  # metadata.json's "format": what Retriever.load reads
SPLITS = ("train", "valid", "test")  # the splits whose interactions count as a user's seen items

# Exact search scores every item: items x dimension multiply-adds per user, 6.4 million at 100,000
# items of 64 dimensions, about a millisecond on one core. Below APPROXIMATE_FROM items an
# approximate index saves little and loses recall; from there the exporter builds IVF.
#
# The approximate indexes search in L2 over each item vector x written as [x, sqrt(R^2 - |x|^2)],
# R the largest norm, with the query [q, 0]: |[q, 0] - [x, r]|^2 = |q|^2 + R^2 - 2 q.x, so the
# nearest row is the one of the largest inner product (the reduction of maximum inner product search
# to L2 of the faiss wiki, Bachrach et al. 2014), and the rows found are scored by q.x itself
# (l2_reduced, search). On the benchmark's 1,001,682 items (ml-100k's and a million new ones,
# EndoDecouple's towers; the 943 users' top 10, one query at a time, one thread, on a 2-core VM
# busy with two other jobs: rates are rough, docs/retrieval.md) HNSW over inner products found
# 0.11-0.39 of the exact top 10 (efSearch 16-512): faiss's neighbour pruning, which assumes a
# metric, left about one link per item, and 68 % of the items of the exact top 10 without one
# pointing to them. Reduced to L2 it links 19 per item but reaches 0.95 at efSearch 512 (M 32 or
# 64) and 0.97 at 1024 (M 64): the queries point away from most items (median cosine -0.41), and
# two thirds of their top 10 are among the 1,682 trained items. IVF with 4 sqrt(n) lists over the
# reduced vectors reaches 0.9895 at nprobe 128 and 0.9926 at 144, 1,200-1,700 queries/s (with
# inner-product lists 0.9636 at 128 and 0.9865 at 256; 2 or 8 sqrt(n) lists cost more at the same
# recall). The reduction is no gain on isotropic random vectors (tests/test_retrieval.py).
APPROXIMATE_FROM = 100_000
APPROXIMATE_KINDS = ("auto", "none", "hnsw", "ivf")
HNSW_M = 32  # neighbours per node: faiss's usual choice (64 found no more above)
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128  # raised to the number of candidates a query asks for
IVF_LISTS_PER_ROOT = 4  # nlist = 4 sqrt(n), faiss's rule of thumb, and the cheapest at recall 0.99 above
IVF_MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below 39 training points per centroid
IVF_TRAIN_POINTS_PER_LIST = 256  # faiss's k-means samples at most 256 points per centroid anyway
IVF_NPROBE = 144  # the fewest lists reaching recall@10 0.99 on the million items above

UNSEEN = -1  # a token outside the tower's vocabulary: embedded as its field's mean seen token

# Models whose score is no inner product of a user vector and an item vector, with the reason.
REFUSED = {
    "EASE": "it scores a user's row of the interaction matrix times an item-by-item weight matrix: a user "
    "has no vector but the whole history, and an item none of a size an index holds",
    "ItemKNN": "it scores an item by its similarity to the user's own items (a sparse item-by-item matrix "
    "of nearest neighbours), not by a user vector",
    "NeuMF": "it scores a pair through an MLP over the concatenated user and item embeddings (beside its "
    "GMF part): not an inner product",
    "Pop": "it scores every item by its training popularity, for every user alike: sort the items, no index needed",
    "ItemMeanRating": "it scores every item by its mean training rating, for every user alike: sort the items, no index needed",
    "PDA": "it ranks by ELU(u·i) + 1, times the item's popularity under predict_method PDA: not the inner product itself",
    "MACR": "it ranks by (u·i - c) times sigmoids of its item and user modules: the modules rescale the inner product per item",
    "MultiVAE": "it decodes a user's whole interaction row through its network: a user has no vector apart from that history",
}

ID_MODELS = (BPR, LightGCN, DICE, MF, MFIPS, MFDR, RelMF)  # embed users and items by id only


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "recbole_endo.retrieval builds faiss indexes, and faiss is not installed: pip install -e '.[retrieval]'"
        ) from error
    return faiss


def tower_models():
    """Names of the plugin's models that rank by user tower · item tower."""
    return sorted(name for name, model in MODELS.items() if _scores_by_towers(model))


def exported_models():
    """Names of the models an index can be exported from."""
    return tower_models() + [model.__name__ for model in ID_MODELS]


def _scores_by_towers(model_class):
    """The class ranks by FeatureTowerRecommender's user tower · item tower, unchanged."""
    return issubclass(model_class, FeatureTowerRecommender) and all(
        getattr(model_class, name) is getattr(FeatureTowerRecommender, name)
        for name in ("full_sort_predict", "representations", "all_representations")
    )


def exported_kind(model_name):
    """``"towers"`` (new users and items embed from their features) or ``"ids"`` (known ones only)
    for a model that scores by an inner product; a ValueError with the reason for any other."""
    if model_name in REFUSED:
        raise ValueError(f"model {model_name} cannot be exported for retrieval: {REFUSED[model_name]}")
    model_class = get_model(model_name)  # a ValueError naming the choices for an unknown name
    if _scores_by_towers(model_class):
        return "towers"
    if model_class in ID_MODELS:
        return "ids"
    if getattr(model_class, "type", None) == ModelType.SEQUENTIAL:
        reason = "a sequential model embeds a user's recent items at each step, not a user id an index could key"
    else:
        reason = (
            "it is not known to score a user-item pair by the inner product of one user vector and one item "
            "vector, so an inner-product index would not rank as it does"
        )
    raise ValueError(
        f"model {model_name} cannot be exported for retrieval: {reason}; exported models: {', '.join(exported_models())}"
    )


@torch.no_grad()
def entity_vectors(model):
    """``(user vectors, item vectors, user offsets or None, representation)`` by internal id, the
    padding id 0 included: the vectors whose inner product (plus the user's offset) is the model's
    ``full_sort_predict``, and a sentence saying which."""
    model.eval()
    offsets = None
    if isinstance(model, FeatureTowerRecommender):
        users, items = (model.all_representations(entity) for entity in ENTITIES)
        tower = model.towers["item"]
        name = type(tower).__name__
        if isinstance(tower, EndoTower) and tower.decoupled:
            name += f", rank_representation: {'side_orthogonal' if tower.side_orthogonal_ranking else 'output'}"
        representation = f"user tower · item tower ({name}): FeatureTowerRecommender.all_representations"
    elif type(model) is BPR:
        users, items = model.user_embedding.weight, model.item_embedding.weight
        representation = "user_embedding · item_embedding"
    elif type(model) is LightGCN:
        users, items = model.forward()
        representation = f"LightGCN.forward(): the mean of the ego embeddings and {model.n_layers} propagation layers"
    elif type(model) is DICE:
        users = torch.cat([model.user_interest.weight, model.user_conformity.weight], dim=1)
        items = torch.cat([model.item_interest.weight, model.item_conformity.weight], dim=1)
        representation = "[interest, conformity] · [interest, conformity]: DICE's two inner products summed"
    elif type(model) in (MF, MFIPS, MFDR, RelMF):
        mf = model.mf
        users = torch.cat([mf.user_embedding.weight, torch.ones_like(mf.user_bias).unsqueeze(1)], dim=1)
        items = torch.cat([mf.item_embedding.weight, mf.item_bias.unsqueeze(1)], dim=1)
        offsets = (mf.user_bias + mf.global_bias).cpu().numpy().astype(np.float32)
        representation = "[p_u, 1] · [q_i, b_i], plus the user's offset b_u + b (user_offsets.npy): the predicted score"
    else:
        exported_kind(type(model).__name__)  # raises with the reason
        raise AssertionError(type(model).__name__)
    return _array(users), _array(items), offsets, representation


def _array(vectors):
    return np.ascontiguousarray(vectors.detach().float().cpu().numpy())


def approximate_kind(items, requested="auto"):
    """The approximate index for a catalogue of ``items``: ``requested``, or with ``auto`` none
    below ``APPROXIMATE_FROM`` items (the exact index answers), IVF from there."""
    if requested not in APPROXIMATE_KINDS:
        raise ValueError(f"approximate index {requested!r} is none of {', '.join(APPROXIMATE_KINDS)}")
    if requested != "auto":
        return requested
    return "none" if items < APPROXIMATE_FROM else "ivf"


def ivf_lists(items):
    """IVF's number of lists for ``items`` vectors: 4 sqrt(n), with enough points per list to train."""
    return max(1, min(int(IVF_LISTS_PER_ROOT * math.sqrt(items)), items // IVF_MIN_POINTS_PER_LIST))


def largest_norm(vectors):
    """The largest Euclidean norm among the rows of ``vectors``."""
    return float(np.sqrt(np.einsum("ij,ij->i", vectors, vectors).max()))


def l2_reduced(vectors, radius):
    """Each row x of ``vectors`` as ``[x, sqrt(radius^2 - |x|^2)]`` (``radius`` at least the
    largest norm), so that a query ``[q, 0]`` is nearest in L2 to the row of the largest q.x."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rest = np.maximum(radius * radius - np.einsum("ij,ij->i", vectors, vectors), 0)
    return np.hstack([vectors, np.sqrt(rest)[:, None]]).astype(np.float32)


def build_index(vectors, kind):
    """A faiss index over ``vectors`` (float32 rows): ``exact`` (IndexFlatIP), or over the rows
    L2-reduced (:func:`l2_reduced`, the radius their largest norm) ``hnsw`` (IndexHNSWFlat) or
    ``ivf`` (IndexIVFFlat, trained on a seeded sample)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "exact":
        index = faiss.IndexFlatIP(vectors.shape[1])
    elif kind in ("hnsw", "ivf"):
        vectors = l2_reduced(vectors, largest_norm(vectors))
        dimension = vectors.shape[1]
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dimension, HNSW_M)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            lists = ivf_lists(len(vectors))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dimension), dimension, lists)
            sample = min(len(vectors), IVF_TRAIN_POINTS_PER_LIST * lists)
            index.train(vectors[np.random.default_rng(0).choice(len(vectors), sample, replace=False)])
            index.nprobe = min(IVF_NPROBE, lists)
    else:
        raise ValueError(f"index kind {kind!r} is none of exact, hnsw, ivf")
    index.add(vectors)
    return index


def index_parameters(index, radius=None):
    """What metadata.json says of an index: its kind and search parameters, and for an L2-reduced
    one its ``radius``."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSW):
        parameters = {"type": "IndexHNSWFlat", "M": HNSW_M, "efConstruction": index.hnsw.efConstruction,
                      "efSearch": f"max({HNSW_EF_SEARCH}, candidates)"}
    elif isinstance(index, faiss.IndexIVF):
        parameters = {"type": "IndexIVFFlat", "nlist": index.nlist, "nprobe": index.nprobe}
    else:
        return {"type": type(index).__name__}
    return {**parameters, "vectors": "L2-reduced: [x, sqrt(radius^2 - |x|^2)], queries [q, 0], rows scored by q.x",
            "radius": radius}


def search(index, query, candidates, vectors=None):
    """``(scores, rows)`` of the ``candidates`` best rows of ``index`` for one query vector; rows
    of -1 mark places an approximate index could not fill. An L2-reduced index (one dimension
    wider than the query) needs the item ``vectors`` (:func:`search_index`)."""
    faiss = _faiss()
    candidates = min(candidates, index.ntotal)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, candidates)
    scores, rows = search_index(index, np.reshape(query, (1, -1)), candidates, vectors)
    return scores[0], rows[0]


def search_index(index, queries, k, vectors=None):
    """``index.search(queries, k)`` at the index's settings, scored by inner products: an index one
    dimension wider than the queries holds the item ``vectors`` L2-reduced, so each query gets a
    0 and the rows found are scored by their inner products with it (from ``vectors``), best first;
    a row of -1 (a place left unfilled) scores float32's lowest value, as in faiss."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if index.d == queries.shape[1]:
        return index.search(queries, k)
    _, rows = index.search(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]), k)
    scores = np.where(rows >= 0, np.einsum("qd,qkd->qk", queries, vectors[rows]), np.finfo(np.float32).min)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_config(path):
    """The config stored in the checkpoint at ``path``, read with torch's safe loader."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        stored = read_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"'{path}' is no checkpoint torch's safe loader reads ({error})") from None
    config = stored.get("config") if isinstance(stored, dict) else None
    if config is None:
        raise ValueError(f"'{path}' holds no config: it is no checkpoint of run_recbole_endo.py or its runner")
    return config


def read_checkpoint_config(path):
    """The checkpoint's config and its model's kind (:func:`exported_kind`), before any data loads."""
    config = checkpoint_config(path)
    return config, exported_kind(config["model"])


def load_model(path):
    """``(config, model, (train, valid, test) datasets)`` rebuilt from the checkpoint at ``path``
    by :func:`recbole_endo.quick_start.load_data_and_model`, the model in eval mode."""
    from recbole_endo.quick_start import load_data_and_model  # imports the trainers, only when a model loads

    config, model, _, *splits = load_data_and_model(path)
    return config, model.eval(), tuple(evaluation_split(split) for split in splits)


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _title_column(config, dataset, title_field):
    """``(field, {raw item id: title})`` from the dataset's raw ``.item`` file: ``title_field``, or
    the first field whose name holds "title"; ``(None, {})`` without an item file or such a field."""
    path = os.path.join(dataset.dataset_path, f"{dataset.dataset_name}.item")
    if not os.path.isfile(path):
        if title_field:
            raise ValueError(f"title field '{title_field}' given, but the dataset has no item file '{path}'")
        return None, {}
    types, frame = read_atomic_file(path, config)
    if title_field is None:
        title_field = next((name for name in types if "title" in name.lower()), None)
        if title_field is None:
            return None, {}
    elif title_field not in types:
        raise ValueError(f"title field '{title_field}' is not in '{path}' (fields: {', '.join(types)})")
    titles = frame[title_field].where(frame[title_field].notna(), "")
    return title_field, dict(zip(frame[dataset.iid_field], titles))


def _seen_rows(dataset, users):
    """The split's interactions as CSR over user rows (internal id - 1) of item rows: ``(indptr, items)``."""
    user_ids = dataset.inter_feat[dataset.uid_field].numpy() - 1
    item_ids = dataset.inter_feat[dataset.iid_field].numpy() - 1
    order = np.argsort(user_ids, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(user_ids, minlength=users))]).astype(np.int64)
    return indptr, item_ids[order].astype(np.int64)


class Recommendation(NamedTuple):
    item: str  # raw item id
    score: float  # the model's score: the inner product, plus the user's offset for the MF family
    title: str  # "" where the item file has no title


class Retriever:
    """An exported index in memory: item and user vectors, their raw ids, the users' seen items,
    the faiss indexes and, for new users and items, the checkpoint's model (loaded when first
    needed). Build with :meth:`from_checkpoint` or :meth:`load`; :meth:`save` writes the folder.

    Rows: item row ``r`` is internal item id ``r + 1`` for the dataset's items (RecBole's padding
    id 0 has no row), then the added items in order; user row ``r`` is internal user id ``r + 1``.
    """

    def __init__(self, metadata, items, item_vectors, users, user_vectors, user_offsets, seen, exact, approximate):
        self.metadata = metadata
        self.items = items  # {"id": [raw], "internal": int64, "trained": bool, "title": [str]}
        self.item_vectors = item_vectors
        self.users = users  # {"id": [raw], "internal": int64, "trained": bool}
        self.user_vectors = user_vectors
        self.user_offsets = user_offsets  # None but for the MF family
        self.seen = seen  # {split: (indptr, item rows)}
        self.exact = exact
        self.approximate = approximate
        self.checkpoint = metadata["checkpoint"]["path"]
        self._checked = False  # self.checkpoint is the file exported (use_checkpoint)
        self._loaded = None  # (config, model, datasets) once a new user or item needs the towers
        self._index_maps()

    def _index_maps(self):
        self.item_rows = {item: row for row, item in enumerate(self.items["id"])}
        self.user_rows = {user: row for row, user in enumerate(self.users["id"])}

    @classmethod
    def from_checkpoint(cls, checkpoint, approximate="auto", title_field=None):
        """Export the checkpoint's model: its vectors, id maps, titles, seen items and indexes."""
        checkpoint = os.path.abspath(checkpoint)
        # What would fail after the data has loaded fails before: a model that cannot export, a
        # typo, faiss missing.
        _, kind = read_checkpoint_config(checkpoint)
        approximate_kind(0, approximate)
        _faiss()
        config, model, splits = load_model(checkpoint)
        dataset = splits[0]
        user_vectors, item_vectors, offsets, representation = entity_vectors(model)
        user_vectors, item_vectors = user_vectors[1:], item_vectors[1:]  # RecBole's padding id 0 is nobody
        title_field, titles = _title_column(config, dataset, title_field)
        item_ids = [str(token) for token in dataset.id2token(dataset.iid_field, np.arange(1, dataset.item_num))]
        items = {
            "id": item_ids,
            "internal": np.arange(1, dataset.item_num, dtype=np.int64),
            "trained": trained_entities(dataset, "item")[1:].numpy(),
            "title": [str(titles.get(item, "")) for item in item_ids],
        }
        users = {
            "id": [str(token) for token in dataset.id2token(dataset.uid_field, np.arange(1, dataset.user_num))],
            "internal": np.arange(1, dataset.user_num, dtype=np.int64),
            "trained": trained_entities(dataset, "user")[1:].numpy(),
        }
        seen = {split: _seen_rows(data, len(users["id"])) for split, data in zip(SPLITS, splits)}
        kind_of_approximate = approximate_kind(len(item_ids), approximate)
        exact = build_index(item_vectors, "exact")
        approximate_index = None if kind_of_approximate == "none" else build_index(item_vectors, kind_of_approximate)
        metadata = {
            "format": FORMAT,
            "model": config["model"],
            "dataset": config["dataset"],
            "commit": git_commit(),  # of the recbole_endo checkout that exported
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": {"path": checkpoint, "sha256": sha256(checkpoint)},
            "dimension": int(item_vectors.shape[1]),
            "representation": representation,
            "score": "inner product" + (" plus the user's offset" if offsets is not None else ""),
            "new_entities": kind == "towers",
            "user_field": dataset.uid_field,
            "item_field": dataset.iid_field,
            "users": len(users["id"]),
            "items": len(item_ids),
            "trained_items": int(items["trained"].sum()),
            "seen": {
                "splits": list(SPLITS),
                "eval_args": {key: config["eval_args"][key] for key in ("split", "group_by", "order")},
                "interactions": {split: int(len(rows)) for split, (_, rows) in seen.items()},
            },
            "title_field": title_field,
            "indexes": {"exact": index_parameters(exact),
                        "approximate": None if approximate_index is None
                        else index_parameters(approximate_index, largest_norm(item_vectors))},
            "faiss": _faiss().__version__,
            "added": [],
        }
        retriever = cls(metadata, items, item_vectors, users, user_vectors,
                        None if offsets is None else offsets[1:], seen, exact, approximate_index)
        retriever._checked, retriever._loaded = True, (config, model, splits)
        return retriever

    @classmethod
    def load(cls, folder, checkpoint=None):
        """The index exported into ``folder``. ``checkpoint``: the one to embed new users and items
        with, when it has moved since the export (it must be the same file: dataset, model and
        content are checked now); else the path metadata.json records, checked when first needed."""
        faiss = _faiss()
        metadata = _read_metadata(folder)
        path = functools.partial(os.path.join, folder)
        approximate = metadata["indexes"]["approximate"]
        names = ["item_vectors.npy", "items.tsv", "user_vectors.npy", "users.tsv", "seen.npz", "exact.faiss"]
        for name in names + (["approximate.faiss"] if approximate else []):
            if not os.path.isfile(path(name)):
                raise FileNotFoundError(f"index folder '{folder}' lacks {name}: export it again")
        items, users = _read_rows(path("items.tsv")), _read_rows(path("users.tsv"))
        with np.load(path("seen.npz"), allow_pickle=False) as stored:
            seen = {split: (stored[f"{split}_indptr"], stored[f"{split}_items"]) for split in metadata["seen"]["splits"]}
        retriever = cls(
            metadata,
            {"id": items["item_id"], "internal": np.array(items["internal_id"], dtype=np.int64),
             "trained": np.array(items["trained"]) == "1", "title": items["title"]},
            np.load(path("item_vectors.npy")),
            {"id": users["user_id"], "internal": np.array(users["internal_id"], dtype=np.int64),
             "trained": np.array(users["trained"]) == "1"},
            np.load(path("user_vectors.npy")),
            np.load(path("user_offsets.npy")) if os.path.isfile(path("user_offsets.npy")) else None,
            seen,
            faiss.read_index(path("exact.faiss")),
            None if approximate is None else faiss.read_index(path("approximate.faiss")),
        )
        if checkpoint is not None:
            retriever.use_checkpoint(checkpoint)
        return retriever

    def use_checkpoint(self, checkpoint):
        """Embed new users and items with ``checkpoint``, after checking that it is the file this
        index was exported from (its dataset, model, then content)."""
        checkpoint = os.path.abspath(checkpoint)
        if not os.path.isfile(checkpoint):  # before checkpoint_config's shorter message: say why it is needed
            raise FileNotFoundError(
                f"checkpoint '{checkpoint}' does not exist: new users and items are embedded by the checkpoint "
                "the index was exported from (metadata.json: checkpoint); pass its new path (--checkpoint)"
            )
        config = checkpoint_config(checkpoint)
        for option in ("dataset", "model"):
            if config[option] != self.metadata[option]:
                raise ValueError(
                    f"checkpoint '{checkpoint}' is of {option} '{config[option]}', but the index was exported "
                    f"from {option} '{self.metadata[option]}': pass the checkpoint it was exported from, or export "
                    "this one into a new folder"
                )
        if sha256(checkpoint) != self.metadata["checkpoint"]["sha256"]:
            raise ValueError(
                f"checkpoint '{checkpoint}' is not the one the index was exported from (its sha256 differs): its "
                "towers would embed new users and items in another space than the index's vectors; export it into a new folder"
            )
        if checkpoint != self.checkpoint:
            self._loaded = None
        self.checkpoint, self._checked = checkpoint, True

    def save(self, folder):
        """Write the index into ``folder``: into a new folder beside it that then takes its place
        (:func:`recbole_endo.files.dataset_folder`), so a reader finds the old index or the whole
        new one. A folder that exists must be an index or empty."""
        faiss = _faiss()
        if os.path.exists(folder) and not (os.path.isdir(folder) and (not os.listdir(folder) or _is_index(folder))):
            raise ValueError(
                f"'{folder}' exists and is not a retrieval index (no metadata.json of {FORMAT}): "
                "export into a new or empty folder"
            )
        with dataset_folder(folder) as work:
            path = functools.partial(os.path.join, work)
            np.save(path("item_vectors.npy"), self.item_vectors)
            np.save(path("user_vectors.npy"), self.user_vectors)
            if self.user_offsets is not None:
                np.save(path("user_offsets.npy"), self.user_offsets)
            _write_rows(path("items.tsv"), {"row": range(len(self.items["id"])), "item_id": self.items["id"],
                                           "internal_id": self.items["internal"], "trained": self.items["trained"].astype(int),
                                           "title": self.items["title"]})
            _write_rows(path("users.tsv"), {"row": range(len(self.users["id"])), "user_id": self.users["id"],
                                           "internal_id": self.users["internal"], "trained": self.users["trained"].astype(int)})
            np.savez(path("seen.npz"), **{f"{split}_{part}": array for split, (indptr, rows) in self.seen.items()
                                          for part, array in (("indptr", indptr), ("items", rows))})
            faiss.write_index(self.exact, path("exact.faiss"))
            if self.approximate is not None:
                faiss.write_index(self.approximate, path("approximate.faiss"))
            with open(path("metadata.json"), "w") as file:
                json.dump(self.metadata, file, indent=2)
                file.write("\n")

    # Recommendations

    def recommend(self, user=None, features=None, k=10, exclude_seen=True, exact=False, strict=False):
        """The ``k`` best items, best first, as :class:`Recommendation` s.

        ``user``: a raw user id of the dataset; or ``features``: a new user's raw values by field
        (:meth:`embed_user`). ``exclude_seen``: True leaves out the user's items of every split
        (train, valid, test: all the dataset records), False none, or a list of split names
        (``["train", "valid"]`` is what RecBole's test ranking leaves out, ``["train"]`` its
        validation's). ``exact``: search the exact index even where an approximate one exists.
        """
        if (user is None) == (features is None):
            raise ValueError("recommend needs a user (a raw user id) or features (a new user's field values), and not both")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k is {k!r}: the number of items to recommend, a positive integer")
        splits = self._seen_splits(exclude_seen)
        offset, seen = 0.0, set()
        if user is not None:
            row = self.user_row(user)
            query = self.user_vectors[row]
            if self.user_offsets is not None:
                offset = float(self.user_offsets[row])
            for split in splits:
                indptr, rows = self.seen[split]
                seen.update(rows[indptr[row]:indptr[row + 1]].tolist())
        else:
            query = self.embed_user(features, strict=strict)
        index = self.exact if exact or self.approximate is None else self.approximate
        scores, rows = search(index, query, k + len(seen), self.item_vectors)
        chosen = [(row, score) for row, score in zip(rows.tolist(), scores.tolist()) if row >= 0 and row not in seen][:k]
        return [Recommendation(self.items["id"][row], score + offset, self.items["title"][row]) for row, score in chosen]

    def _seen_splits(self, exclude_seen):
        if exclude_seen is True:
            return list(self.seen)
        if exclude_seen is False or exclude_seen is None:
            return []
        splits = [exclude_seen] if isinstance(exclude_seen, str) else list(exclude_seen)
        unknown = [split for split in splits if split not in self.seen]
        if unknown:
            raise ValueError(f"exclude_seen names split {unknown[0]!r}; the index's splits are {', '.join(self.seen)}")
        return splits

    def user_row(self, user):
        """The row of raw user id ``user``, or a ValueError naming it."""
        row = self.user_rows.get(str(user))
        if row is None:
            new = (f"embed a new user from its side fields with features={{...}} (--feature FIELD=VALUE)"
                   if self.metadata["new_entities"] else
                   f"{self.metadata['model']} embeds users by id alone, so a new user needs a tower model")
            raise ValueError(
                f"user {user!r} is not among the {len(self.user_rows)} users of dataset '{self.metadata['dataset']}' "
                f"({self.metadata['user_field']}): {new}"
            )
        return row

    # New users and items: the checkpoint's towers

    def _require_towers(self, what):
        if not self.metadata["new_entities"]:
            raise ValueError(
                f"{what}: {self.metadata['model']} embeds users and items by id alone (its vectors are trained "
                f"per id), so a new one has no vector without retraining; the towers of {', '.join(tower_models())} "
                "embed them from their features"
            )

    def model(self):
        """``(config, model, datasets)`` of the index's checkpoint, loaded once and checked to be
        the one exported (:meth:`use_checkpoint`) on the same dataset."""
        if self._loaded is None:
            if not self._checked:
                self.use_checkpoint(self.checkpoint)
            config, model, splits = load_model(self.checkpoint)
            dataset = splits[0]
            ids = [str(token) for token in dataset.id2token(dataset.iid_field, np.arange(1, dataset.item_num))]
            known = [item for item, internal in zip(self.items["id"], self.items["internal"]) if internal >= 0]
            if ids != known:
                raise ValueError(
                    f"the dataset at '{dataset.dataset_path}' has changed since the index was exported (its items "
                    "differ): export the checkpoint again"
                )
            self._loaded = (config, model, splits)
        return self._loaded

    def embed_user(self, features, strict=False):
        """A new user's vector from ``features``, raw values by field name, through the user tower
        as it embeds a user without training interactions: the id is unseen (its field's mean
        trained embedding), as is any value outside the tower's training vocabulary, with a warning
        for a side field (a ValueError with ``strict``). A field left out is a missing value, as
        an empty cell of the ``.user`` file: no token, or the field's mean float. A token_seq
        value is a string split by ``seq_separator`` or a list of tokens."""
        self._require_towers("a new user")
        if not isinstance(features, dict) or not features:
            raise ValueError(f"features is {features!r}: a dict of a new user's raw values by field name")
        config, model, (dataset, *_) = self.model()
        fields = self._tower_fields("user", list(features), "features")
        columns = _columns(model, dataset, config, fields, [features], "user", strict, "features")
        return tower_vectors(model.towers["user"], columns, 1)[0]

    def add_items(self, item_file, strict=False):
        """Embed the items of the RecBole ``.item`` file ``item_file`` with the item tower, as the
        model embeds an item without training interactions (see :meth:`embed_user`), and add them
        to the indexes. The file names the dataset's item id field and every field of the item
        tower, with the dataset's types (an empty cell is a missing value); other columns are not
        read. Returns the added raw ids."""
        self._require_towers(f"adding items from '{item_file}'")
        config, model, (dataset, *_) = self.model()
        types, frame = read_atomic_file(item_file, config)
        id_field = dataset.iid_field
        fields = self._tower_fields("item", [], item_file)
        for field in [id_field] + fields:
            if field not in types:
                raise ValueError(
                    f"'{item_file}' lacks field '{field}' ({dataset.field2type[field].value}), which the item tower "
                    "reads: add the column (an empty cell is a missing value)"
                )
            if types[field] != dataset.field2type[field]:
                raise ValueError(
                    f"'{item_file}' types field '{field}' as {types[field].value}; the dataset's is "
                    f"{dataset.field2type[field].value}"
                )
        if frame.empty:
            raise ValueError(f"'{item_file}' holds no item")
        ids = frame[id_field].tolist()
        above = set()  # the file's ids so far: a set, since a slice of the list made a million items take days
        for position, item in enumerate(ids):
            if _missing(item):
                raise ValueError(f"'{item_file}' line {position + 2} has no {id_field}")
            if item in self.item_rows or item in above:
                where = "the index" if item in self.item_rows else "the file above"
                raise ValueError(f"'{item_file}' line {position + 2}: item {item!r} is already in {where}")
            above.add(item)
        rows = frame.to_dict("records")
        columns = _columns(model, dataset, config, fields, rows, "item", strict, item_file)
        vectors = tower_vectors(model.towers["item"], columns, len(rows))
        title_field = self.metadata["title_field"]
        titles = [("" if title_field not in types or _missing(row[title_field]) else str(row[title_field])) for row in rows]
        self.item_vectors = np.concatenate([self.item_vectors, vectors])
        self.items = {
            "id": self.items["id"] + ids,
            "internal": np.concatenate([self.items["internal"], np.full(len(ids), -1)]),
            "trained": np.concatenate([self.items["trained"], np.zeros(len(ids), dtype=bool)]),
            "title": self.items["title"] + titles,
        }
        self.exact.add(vectors)
        if self.approximate is not None:
            self._add_approximate(vectors)
        self.metadata["items"] = len(self.items["id"])
        self.metadata["added"].append({"file": os.path.abspath(item_file), "items": len(ids),
                                       "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._index_maps()
        return ids

    def _add_approximate(self, vectors):
        """Add ``vectors`` (already among ``item_vectors``) to the approximate index, L2-reduced with
        its radius. A vector longer than the radius would be reduced to one too far from every
        query, so the index is then built again over every item, with the new largest norm. An
        index without a radius (exported before the reduction) holds the vectors as they are."""
        parameters = self.metadata["indexes"]["approximate"]
        radius = parameters.get("radius")
        if radius is None:
            self.approximate.add(vectors)
        elif largest_norm(vectors) <= radius:
            self.approximate.add(l2_reduced(vectors, radius))
        else:
            kind = "hnsw" if isinstance(self.approximate, _faiss().IndexHNSW) else "ivf"
            self.approximate = build_index(self.item_vectors, kind)
            self.metadata["indexes"]["approximate"] = index_parameters(self.approximate, largest_norm(self.item_vectors))

    def _tower_fields(self, entity, given, source):
        """The tower's fields but the id; each of ``given`` checked to be one of them."""
        config, model, (dataset, *_) = self.model()
        id_field = dataset.uid_field if entity == "user" else dataset.iid_field
        groups = model.endo_fields[entity]
        fields = [field for field in groups["atom"] + groups["side"] if field != id_field]
        for field in given:
            if field == id_field:
                raise ValueError(
                    f"{source} names the {entity} id field '{field}': a known {entity} is found by its id "
                    f"(user=...), and a new {entity}'s id is unseen, embedded as the mean trained id"
                )
            if field not in fields:
                atoms = [name for name in groups["atom"] if name != id_field]
                raise ValueError(
                    f"{source} names field '{field}', which is not a side field of the {entity} tower "
                    f"(endo_fields.{entity}.side: {', '.join(groups['side']) or 'none'}; "
                    f"its atoms besides the id: {', '.join(atoms) or 'none'})"
                )
        return fields


def _is_index(folder):
    try:
        return _read_metadata(folder) is not None
    except (OSError, ValueError):
        return False


def _read_metadata(folder):
    path = os.path.join(folder, "metadata.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{folder}' is no retrieval index (no metadata.json): export one with "
                                "python -m recbole_endo.retrieval export CHECKPOINT OUT_DIR")
    with open(path) as file:
        metadata = json.load(file)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not of {FORMAT}: export the index again")
    return metadata


def _write_rows(path, columns):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, delimiter="\t", lineterminator="\n")
        writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))


def _read_rows(path):
    with open(path, newline="") as file:
        reader = csv.reader(file, delimiter="\t")
        header = next(reader)
        rows = list(reader)
    return {name: [row[position] for row in rows] for position, name in enumerate(header)}


def _embedding_of(tower, field):
    """The tower's FeatureEmbedding that reads ``field`` (not the id path's)."""
    for module in tower.modules():
        if isinstance(module, FeatureEmbedding) and field in module.fields and module is not tower.id_embedding:
            return module
    raise AssertionError(field)


def _columns(model, dataset, config, fields, rows, entity, strict, source):
    """Each of ``fields``' values for the ``entity`` s of ``rows`` (dicts of raw values) as
    :func:`tower_vectors` reads them: token lists (``UNSEEN`` for a token the tower never saw in
    training) or float rows; the id field as one unseen token. An unseen value of a side field
    is warned of, or refused with ``strict``; unseen atoms (a new title word) are expected."""
    tower = model.towers[entity]
    columns = {dataset.uid_field if entity == "user" else dataset.iid_field: [[UNSEEN]] * len(rows)}
    side = set(model.endo_fields[entity]["side"])
    for field in fields:
        field_type = dataset.field2type[field]
        embedding = _embedding_of(tower, field)
        values = [row.get(field) for row in rows]
        if field_type in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
            vocabulary, seen = dataset.field2token_id[field], embedding.seen(field)
            column = []
            for value in values:
                if _missing(value):
                    tokens = []
                elif field_type == FeatureType.TOKEN_SEQ:
                    tokens = value.split(config["seq_separator"]) if isinstance(value, str) else [str(token) for token in value]
                    tokens = [token for token in tokens if token]
                else:
                    tokens = [str(value)]
                ids = [vocabulary.get(token, UNSEEN) for token in tokens]
                unseen = [token for token, token_id in zip(tokens, ids) if token_id == UNSEEN or not seen[token_id]]
                if unseen and field in side:
                    message = (
                        f"{source}: {entity} field '{field}' value {unseen[0]!r} was never seen in training, so the "
                        f"{entity} tower embeds it as the field's mean trained token (towers.py, FeatureEmbedding)"
                    )
                    if strict:
                        raise ValueError(message + "; give a value of the training data")
                    warnings.warn(message, stacklevel=3)
                column.append([UNSEEN if token_id == UNSEEN or not seen[token_id] else token_id for token_id in ids])
            columns[field] = column
        else:
            normalised = config["normalize_all"] or field in (config["normalize_field"] or []) or field in (config["discretization"] or {})
            if normalised:
                raise ValueError(
                    f"{source}: {entity} field '{field}' is rescaled by the dataset's normalize_all, normalize_field or "
                    "discretization, from values of the loaded data that the checkpoint does not keep: a raw value cannot be mapped"
                )
            table = embedding.table(field)
            width, fill = table.shape[1], table[1:].mean(0).cpu()  # RecBole fills a missing float with the field's mean
            column = []
            for value in values:
                if _missing(value):
                    column.append(fill)
                    continue
                parts = value.split(config["seq_separator"]) if isinstance(value, str) else np.atleast_1d(value).tolist()
                try:
                    numbers = [float(part) for part in parts if str(part).strip()]
                except ValueError:
                    raise ValueError(f"{source}: {entity} field '{field}' ({field_type.value}) has value {value!r}, not a number") from None
                if len(numbers) > width or (field_type == FeatureType.FLOAT and len(numbers) != 1):
                    raise ValueError(f"{source}: {entity} field '{field}' has {len(numbers)} numbers in {value!r}; it holds {width}")
                column.append(torch.tensor(numbers + [0.0] * (width - len(numbers)), dtype=table.dtype))
            columns[field] = torch.stack(column)
    return columns


def _embedded_rows(embedding, columns, count):
    """``FeatureEmbedding.forward``'s eval-mode output ``[count, fields, size]`` for entities given
    by ``columns``: a token field's bag is the mean of its tokens' rows, an unseen token's row its
    field's mean seen token, an empty bag zeros; a float field goes through its linear map."""
    parts = []
    for field in embedding.fields:
        if field in embedding.token_fields:
            weight, mean = embedding.encoder(field).weight, embedding.seen_mean(field)
            bags = [torch.stack([mean if token == UNSEEN else weight[token] for token in tokens]).mean(0)
                    if tokens else weight.new_zeros(weight.shape[1]) for tokens in columns[field]]
            parts.append(torch.stack(bags))
        else:
            parts.append(embedding.encoder(field)(columns[field].to(embedding.token_columns.device)))
    return torch.stack(parts, dim=1)


@torch.no_grad()
def tower_vectors(tower, columns, count):
    """The tower's eval-mode output for ``count`` entities described by ``columns``
    (:func:`_columns`): every FeatureEmbedding of the tower reads them in place of its feature
    table for the call, so the branches, output layer and id path run as they do for a cold entity."""
    embeddings = [module for module in tower.modules() if isinstance(module, FeatureEmbedding)]
    training = tower.training
    tower.eval()
    try:
        for embedding in embeddings:
            rows = _embedded_rows(embedding, columns, count)
            embedding.forward = lambda ids, rows=rows: rows[ids]
        ids = torch.arange(count, device=embeddings[0].token_columns.device)
        return np.ascontiguousarray(tower(ids).float().cpu().numpy())
    finally:
        for embedding in embeddings:
            embedding.__dict__.pop("forward", None)
        tower.train(training)


def export(checkpoint, out_dir, approximate="auto", title_field=None):
    """Export ``checkpoint`` into ``out_dir`` (:meth:`Retriever.from_checkpoint`, :meth:`Retriever.save`)."""
    retriever = Retriever.from_checkpoint(checkpoint, approximate=approximate, title_field=title_field)
    retriever.save(out_dir)
    return retriever


def _parse_features(pairs):
    features = {}
    for pair in pairs or []:
        field, separator, value = pair.partition("=")
        if not separator or not field:
            raise ValueError(f"--feature {pair!r} is not FIELD=VALUE")
        features[field] = value
    return features


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_endo.retrieval", allow_abbrev=False,
        description="Top-k recommendations from a trained checkpoint through faiss indexes (docs/retrieval.md).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", allow_abbrev=False, help="write a checkpoint's vectors and indexes into OUT_DIR")
    export_parser.add_argument("checkpoint")
    export_parser.add_argument("out_dir")
    export_parser.add_argument("--approximate", default="auto", choices=APPROXIMATE_KINDS,
                               help=f"approximate index; auto: none below {APPROXIMATE_FROM} items, IVF from there")
    export_parser.add_argument("--title-field", help="the item field printed as the title (default: the first with 'title' in its name)")
    recommend = commands.add_parser("recommend", allow_abbrev=False, help="print a user's top-k items")
    recommend.add_argument("out_dir")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a raw user id of the dataset")
    who.add_argument("--feature", action="append", metavar="FIELD=VALUE", help="a new user's raw field value (repeat per field)")
    recommend.add_argument("-k", type=int, default=10, help="items to print (default 10)")
    recommend.add_argument("--exclude-seen", default=",".join(SPLITS), metavar="SPLITS",
                           help="comma-separated splits whose items the user has seen (default train,valid,test); none keeps them")
    recommend.add_argument("--exact", action="store_true", help="search the exact index even where an approximate one exists")
    recommend.add_argument("--checkpoint", help="the exported checkpoint's new path, if it has moved (new users only)")
    recommend.add_argument("--strict", action="store_true", help="refuse a side value never seen in training, rather than embed it as the field's mean")
    add = commands.add_parser("add-items", allow_abbrev=False, help="embed the items of a RecBole .item file and add them to OUT_DIR")
    add.add_argument("out_dir")
    add.add_argument("item_file")
    add.add_argument("--checkpoint", help="the exported checkpoint's new path, if it has moved")
    add.add_argument("--strict", action="store_true", help="refuse a side value never seen in training")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # RecBole's Config reads --key=value from sys.argv; nothing here is meant for it.
    sys.argv = sys.argv[:1]
    # A side value never seen in training is embedded anyway, with one line saying so.
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    if not logging.getLogger().handlers:
        # RecBole's init_logger adds its console and file handlers through basicConfig, which does
        # nothing once the root logger has one: the loaded run's config is not printed again.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "export":
            retriever = export(args.checkpoint, args.out_dir, args.approximate, args.title_field)
            meta = retriever.metadata
            approximate = meta["indexes"]["approximate"]
            print(f"exported {meta['model']} on {meta['dataset']}: {meta['items']} items, {meta['users']} users, "
                  f"dimension {meta['dimension']}, exact IndexFlatIP"
                  + (f" and {approximate['type']}" if approximate else "") + f" -> {args.out_dir}")
        elif args.command == "recommend":
            retriever = Retriever.load(args.out_dir, args.checkpoint)
            splits = [] if args.exclude_seen.strip() == "none" else [s.strip() for s in args.exclude_seen.split(",") if s.strip()]
            recommendations = retriever.recommend(
                user=args.user, features=_parse_features(args.feature) if args.feature else None,
                k=args.k, exclude_seen=splits, exact=args.exact, strict=args.strict,
            )
            print("rank\titem_id\tscore\ttitle")
            for rank, (item, score, title) in enumerate(recommendations, 1):
                print(f"{rank}\t{item}\t{score:.6g}\t{title}")
        else:
            retriever = Retriever.load(args.out_dir, args.checkpoint)
            added = retriever.add_items(args.item_file, strict=args.strict)
            retriever.save(args.out_dir)
            print(f"added {len(added)} items to {args.out_dir} ({retriever.metadata['items']} in all): {' '.join(added)}")
    except (ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
