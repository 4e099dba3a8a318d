"""Retrieval (recbole_endo.retrieval): an exported index ranks as the model's own full_sort_predict
with the seen items left out, new users and items embed as the towers embed a cold one, the
approximate indexes find the exact top-k, and bad input ends in an error that names it."""

import math
import os
import sys

import faiss
import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import DATA_DIR, TINY_YAML
from recbole_endo import retrieval
from recbole_endo.compat.checkpoint import read_checkpoint
from recbole_endo.experiments.provenance import git_commit
from recbole_endo.quick_start import load_data_and_model, run_recbole_endo
from recbole_endo.retrieval import (
    Retriever, approximate_kind, build_index, exported_kind, index_parameters, l2_reduced, largest_norm, main, search,
    search_index,
)

K = 10
EXPORTED = ["TwoTowerSplit", "TwoTowerConcat", "EndoDecouple", "BPR", "LightGCN", "DICE", "MF"]
TINY_ITEM_HEADER = "item_id:token\ttitle:token_seq\tclass:token_seq\tprice:float\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(model, **options)``: the checkpoint of ``model`` trained on the tiny data (two
    epochs), trained once per module and options."""
    folder = tmp_path_factory.mktemp("trained")
    checkpoints = {}

    def checkpoint(model, **options):
        key = (model, tuple(sorted(options.items())))
        if key not in checkpoints:
            # The autouse isolated_run fixture is per test: RecBole's log/ must not land in the checkout.
            cwd, argv = os.getcwd(), sys.argv
            os.chdir(folder)
            sys.argv = ["pytest"]
            try:
                config_dict = {"data_path": DATA_DIR, "checkpoint_dir": str(folder / "saved"), **options}
                result = run_recbole_endo(model=model, dataset="tiny", config_file_list=[TINY_YAML], config_dict=config_dict)
            finally:
                os.chdir(cwd)
                sys.argv = argv
            checkpoints[key] = result["checkpoint"]
        return checkpoints[key]

    return checkpoint


def export(checkpoint, folder, *options):
    main(["export", checkpoint, str(folder), *options])
    return Retriever.load(folder)


def masked_scores(model, dataset, users):
    """full_sort_predict's scores of ``users`` (internal ids), RecBole's padding item at -inf."""
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({dataset.uid_field: users})).view(len(users), -1).clone()
    scores[:, 0] = -math.inf
    return scores


def assert_top_k(recommendations, scores, dataset, k=K):
    """``recommendations`` are the top ``k`` of ``scores`` (one user's, by internal item id): each
    carries the model's score of its item, the scores are the k best, and where no two of the
    best k + 1 scores tie the items come in the same order. Returns whether the order was compared."""
    values, items = scores.topk(k + 1)
    got = [dataset.token2id(dataset.iid_field, item) for item, _, _ in recommendations]
    assert len(recommendations) == k
    assert np.allclose([score for _, score, _ in recommendations], scores[got].numpy(), atol=1e-5)
    assert np.allclose([score for _, score, _ in recommendations], values[:k].numpy(), atol=1e-5)
    if (values[:-1] - values[1:]).min() > 1e-4:
        assert got == items[:k].tolist()
        return True
    return False


@pytest.mark.parametrize("name", EXPORTED)
def test_exact_top_k_is_full_sort_predicts_top_k_with_the_seen_items_left_out(name, trained, tmp_path):
    checkpoint = trained(name)
    retriever = export(checkpoint, tmp_path / "index")
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(checkpoint)
    users = torch.arange(1, dataset.user_num)
    scores = masked_scores(model, dataset, users)
    compared = 0
    for row, user in enumerate(users.tolist()):
        token = dataset.id2token(dataset.uid_field, user)
        # What RecBole's test ranking leaves out: the user's training and validation items.
        scores[row, test_data.uid2history_item[user]] = -math.inf
        compared += assert_top_k(retriever.recommend(user=token, k=K, exclude_seen=["train", "valid"]), scores[row], dataset)
        # By default every split's items are seen, the test items too.
        scores[row, test_data.uid2positive_item[user]] = -math.inf
        compared += assert_top_k(retriever.recommend(user=token, k=K), scores[row], dataset)
    assert compared >= len(users)  # ties left most users' orders to compare
    # Nothing left out: the model's ranking of every item.
    unmasked = masked_scores(model, dataset, users[:1])[0]
    assert_top_k(retriever.recommend(user=dataset.id2token(dataset.uid_field, 1), k=K, exclude_seen=False), unmasked, dataset)


def test_export_writes_the_vectors_id_map_titles_seen_items_metadata_and_an_exact_index(trained, tmp_path):
    checkpoint = trained("TwoTowerSplit")
    retriever = export(checkpoint, tmp_path / "index")
    config, model, dataset, *_ = load_data_and_model(checkpoint)
    names = sorted(os.listdir(tmp_path / "index"))
    assert names == ["exact.faiss", "item_vectors.npy", "items.tsv", "metadata.json", "seen.npz", "user_vectors.npy", "users.tsv"]
    meta = retriever.metadata
    assert (meta["model"], meta["dataset"], meta["commit"], meta["dimension"]) == ("TwoTowerSplit", "tiny", git_commit(), 8)
    assert meta["representation"].startswith("user tower · item tower (SplitTower)")
    assert meta["checkpoint"]["path"] == os.path.abspath(checkpoint) and meta["faiss"] == faiss.__version__
    assert meta["seen"]["splits"] == ["train", "valid", "test"] and sum(meta["seen"]["interactions"].values()) == 600
    # Every item of the dataset but RecBole's padding, by internal id; the one without a training interaction marked.
    model.eval()
    with torch.no_grad():
        items = model.all_item_representations()[1:].numpy()
    assert np.allclose(np.load(tmp_path / "index" / "item_vectors.npy"), items, atol=1e-6)
    assert retriever.items["id"] == list(dataset.id2token("item_id", np.arange(1, 61)))
    assert meta["items"] == 60 and meta["trained_items"] == retriever.items["trained"].sum() == 59
    # Titles as the raw item file writes them.
    with open(os.path.join(DATA_DIR, "tiny", "tiny.item")) as file:
        raw = dict(line.rstrip("\n").split("\t")[:2] for line in list(file)[1:])
    assert meta["title_field"] == "title"
    assert dict(zip(retriever.items["id"], retriever.items["title"])) == raw
    assert isinstance(retriever.exact, faiss.IndexFlatIP) and retriever.exact.ntotal == 60
    assert meta["indexes"] == {"exact": {"type": "IndexFlatIP"}, "approximate": None}  # 60 items: exact search


def test_the_command_prints_raw_ids_scores_and_titles(trained, tmp_path, capsys):
    checkpoint = trained("TwoTowerSplit")
    retriever = export(checkpoint, tmp_path / "index")
    capsys.readouterr()
    main(["recommend", str(tmp_path / "index"), "--user", "u3", "-k", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rank\titem_id\tscore\ttitle"
    expected = retriever.recommend(user="u3", k=4)
    assert [line.split("\t") for line in lines[1:]] == [
        [str(rank), item, f"{score:.6g}", title] for rank, (item, score, title) in enumerate(expected, 1)
    ]


def test_an_approximate_index_is_written_loaded_and_searched_by_default(trained, tmp_path):
    retriever = export(trained("BPR"), tmp_path / "index", "--approximate", "hnsw")
    assert os.path.isfile(tmp_path / "index" / "approximate.faiss")
    assert isinstance(retriever.approximate, faiss.IndexHNSW)
    assert retriever.metadata["indexes"]["approximate"]["type"] == "IndexHNSWFlat"
    for user in ("u1", "u7", "u40"):  # 60 items: the graph search visits them all
        found, exact = retriever.recommend(user=user), retriever.recommend(user=user, exact=True)
        # The same items, each scored by its inner product (numpy's sum, faiss's in another order).
        assert [(item, title) for item, _, title in found] == [(item, title) for item, _, title in exact]
        assert [score for _, score, _ in found] == pytest.approx([score for _, score, _ in exact], rel=1e-6)
    os.remove(tmp_path / "index" / "approximate.faiss")
    with pytest.raises(FileNotFoundError, match="lacks approximate.faiss: export it again"):
        Retriever.load(tmp_path / "index")


def test_the_approximate_index_follows_the_catalogue_size():
    assert approximate_kind(99_999) == "none" and approximate_kind(100_000) == "ivf"
    assert approximate_kind(10_000_000) == "ivf" and approximate_kind(200_000, "hnsw") == "hnsw"
    assert approximate_kind(50, "ivf") == "ivf"
    with pytest.raises(ValueError, match="approximate index 'annoy' is none of auto, none, hnsw, ivf"):
        approximate_kind(50, "annoy")


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.95), ("ivf", 0.9)])
def test_the_approximate_indexes_find_most_of_the_exact_top_k(kind, floor):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5000, 32)).astype(np.float32)
    queries = rng.standard_normal((200, 32)).astype(np.float32)
    exact, approximate = build_index(vectors, "exact"), build_index(vectors, kind)
    found = [len(set(search(exact, query, K)[1]) & set(search(approximate, query, K, vectors)[1])) for query in queries]
    assert np.mean(found) / K >= floor


def wide_norms(rng, items, dimension):
    """Gaussian rows scaled by e^u, u uniform in [-2, 2]: norms spread over a factor of 55, as
    inner product search is hard for an index that ignores them."""
    vectors = rng.standard_normal((items, dimension)) * np.exp(rng.uniform(-2, 2, (items, 1)))
    return vectors.astype(np.float32)


def test_the_l2_reduction_ranks_by_inner_product_and_the_rows_found_score_their_inner_products():
    rng = np.random.default_rng(0)
    vectors, queries = wide_norms(rng, 3000, 16), rng.standard_normal((50, 16)).astype(np.float32)
    radius = largest_norm(vectors)
    assert radius == pytest.approx(np.linalg.norm(vectors, axis=1).max())
    # Every reduced row has norm radius, and the squared distance to [q, 0] is |q|^2 + radius^2 - 2 q.x.
    reduced = l2_reduced(vectors, radius)
    assert reduced.shape == (3000, 17) and np.allclose(np.linalg.norm(reduced, axis=1), radius, rtol=1e-5)
    query = np.append(queries[0], 0)
    assert np.allclose(((reduced - query) ** 2).sum(1), queries[0] @ queries[0] + radius**2 - 2 * vectors @ queries[0], atol=1e-3)
    # Searched exhaustively (IVF probing every list, HNSW asked for every row) an index over the
    # reduced rows finds the exact inner-product top k, best first, scored by the inner products.
    exact, ivf, hnsw = build_index(vectors, "exact"), build_index(vectors, "ivf"), build_index(vectors, "hnsw")
    assert ivf.d == hnsw.d == 17 and ivf.metric_type == hnsw.metric_type == faiss.METRIC_L2
    ivf.nprobe = ivf.nlist
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    for query, expected in zip(queries, truth):
        assert np.array_equal(search(exact, query, K)[1], expected)
        for index, candidates in ((ivf, K), (hnsw, len(vectors))):
            scores, rows = search(index, query, candidates, vectors)
            assert np.array_equal(rows[:K], expected) and np.all(np.diff(scores) <= 0)
            assert np.allclose(scores, vectors[rows] @ query, rtol=1e-6, atol=1e-5)
    assert index_parameters(hnsw, radius)["radius"] == radius and index_parameters(exact) == {"type": "IndexFlatIP"}
    # A place an index could not fill (5 rows, 10 asked) is row -1 at faiss's lowest score.
    scores, rows = search_index(build_index(vectors[:5], "hnsw"), queries[:1], K, vectors)
    assert sorted(rows[0, :5]) == list(range(5)) and list(rows[0, 5:]) == [-1] * 5
    assert np.all(scores[0, 5:] == np.finfo(np.float32).min)


def test_a_vector_longer_than_the_radius_rebuilds_the_approximate_index(tmp_path):
    rng = np.random.default_rng(1)
    vectors = wide_norms(rng, 400, 8)
    radius = largest_norm(vectors)
    ivf = build_index(vectors, "ivf")
    metadata = {"checkpoint": {"path": str(tmp_path / "none.pth")}, "indexes": {"approximate": index_parameters(ivf, radius)}}
    retriever = Retriever(metadata, {"id": [str(row) for row in range(400)]}, vectors, {"id": []}, np.zeros((0, 8), np.float32),
                          None, {}, build_index(vectors, "exact"), ivf)
    # A shorter vector joins the index under the same radius; a longer one (the new best for a
    # query along it) has the index built again over every row, with its norm as the radius.
    for added, kept in ((vectors[:1] * 0.5, True), (vectors[:1] * 2 * radius / np.linalg.norm(vectors[0]), False)):
        retriever.item_vectors = np.concatenate([retriever.item_vectors, added])
        retriever._add_approximate(added)
        assert (retriever.approximate is ivf) == kept and retriever.approximate.ntotal == len(retriever.item_vectors)
    assert retriever.metadata["indexes"]["approximate"]["radius"] == pytest.approx(2 * radius)
    retriever.approximate.nprobe = retriever.approximate.nlist
    scores, rows = search(retriever.approximate, vectors[0], K, retriever.item_vectors)
    assert rows[0] == 401 and scores[0] == pytest.approx(float(retriever.item_vectors[401] @ vectors[0]))
    assert np.array_equal(rows, np.argsort(-(retriever.item_vectors @ vectors[0]))[:K])


def split_tower_by_hand(tower, ids, unseen_atoms=True, side_columns=None):
    """A split tower's output for ``ids`` with their atoms embedded as unseen (a new entity's) and
    side columns replaced as ``{position: vector}``: its branches and output layer run by hand."""
    embedded = tower.embed(ids)
    if unseen_atoms:
        embedded["atom"] = tower.embeddings["atom"].as_unseen(embedded["atom"], torch.ones(len(ids), dtype=torch.bool))
    for position, vector in (side_columns or {}).items():
        embedded["side"][:, position] = vector
    branches = {group: tower.branch(group, values) for group, values in embedded.items()}
    if tower.id_embedding is None:
        return tower.combine(ids, branches)
    id_path = tower.id_embedding.as_unseen(tower.id_embedding(ids), torch.ones(len(ids), dtype=torch.bool)).squeeze(-2)
    return tower.output(torch.cat([branches[group] for group in tower.embeddings], dim=-1)) + id_path


def raw_user_features(dataset, user):
    table = dataset.get_user_feature()
    return {field: dataset.id2token(field, int(table[field][user])) for field in ("age", "gender", "favourite")}


@pytest.mark.parametrize("name, options", [("TwoTowerSplit", {}), ("EndoDecouple", {}), ("TwoTowerSplit", {"id_path": True})])
def test_a_new_user_from_raw_side_values_is_the_tower_of_a_user_whose_atoms_are_unseen(name, options, trained, tmp_path):
    checkpoint = trained(name, **options)
    retriever = export(checkpoint, tmp_path / "index")
    config, model, dataset, *_ = load_data_and_model(checkpoint)
    model.eval()
    tower = model.towers["user"]
    with torch.no_grad():
        items = model.all_item_representations()
        for user in (1, 17, 40):
            expected = split_tower_by_hand(tower, torch.tensor([user]))[0]
            features = raw_user_features(dataset, user)
            assert np.allclose(retriever.embed_user(features), expected.numpy(), atol=1e-5)
            scores = items @ expected
            scores[0] = -math.inf
            assert_top_k(retriever.recommend(features=features, k=K), scores, dataset)


def test_a_side_value_the_tower_never_saw_is_its_fields_mean_token_with_a_warning_or_refused(trained, tmp_path):
    checkpoint = trained("TwoTowerSplit")
    retriever = export(checkpoint, tmp_path / "index")
    config, model, dataset, *_ = load_data_and_model(checkpoint)
    model.eval()
    tower = model.towers["user"]
    features = {**raw_user_features(dataset, 5), "gender": "nonbinary"}
    with pytest.warns(UserWarning, match="features: user field 'gender' value 'nonbinary' was never seen in training"):
        vector = retriever.embed_user(features)
    with torch.no_grad():
        side = tower.embeddings["side"]
        expected = split_tower_by_hand(tower, torch.tensor([5]), side_columns={side.fields.index("gender"): side.seen_mean("gender")})
    assert np.allclose(vector, expected[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="user field 'gender' value 'nonbinary' was never seen in training.*give a value of the training data"):
        retriever.recommend(features=features, strict=True)
    # A field left out is a missing value, as an empty cell of the .user file: no token.
    with torch.no_grad():
        missing = split_tower_by_hand(tower, torch.tensor([5]), side_columns={side.fields.index("gender"): torch.zeros(8)})
    partial = {field: value for field, value in features.items() if field != "gender"}
    assert np.allclose(retriever.embed_user(partial), missing[0].numpy(), atol=1e-5)


def write_item_file(path, rows, header=TINY_ITEM_HEADER):
    with open(path, "w") as file:
        file.write(header)
        for row in rows:
            file.write("\t".join(row) + "\n")
    return str(path)


def test_added_items_embed_as_cold_items_join_both_indexes_and_come_back(trained, tmp_path, capsys):
    checkpoint = trained("TwoTowerSplit")
    folder = tmp_path / "index"
    export(checkpoint, folder, "--approximate", "hnsw")
    config, model, dataset, *_ = load_data_and_model(checkpoint)
    model.eval()
    table = dataset.get_item_feature()
    # n1 has item 7's genres and price and a title of words never seen: every atom unseen.
    source = 7
    genres = " ".join(dataset.id2token("class", [token for token in table["class"][source].tolist() if token]))
    price = f"{float(table['price'][source]):.2f}"
    item_file = write_item_file(tmp_path / "new.item", [["n1", "zebra quokka", genres, price], ["n2", "red city", "drama", ""]])
    capsys.readouterr()
    main(["add-items", str(folder), item_file])
    assert "added 2 items" in capsys.readouterr().out
    retriever = Retriever.load(folder)
    assert retriever.items["id"][-2:] == ["n1", "n2"] and retriever.items["title"][-2:] == ["zebra quokka", "red city"]
    assert retriever.exact.ntotal == retriever.approximate.ntotal == 62 and retriever.metadata["items"] == 62
    assert retriever.metadata["added"][0]["file"] == item_file
    with torch.no_grad():
        expected = split_tower_by_hand(model.towers["item"], torch.tensor([source]))[0].numpy()
        assert np.allclose(retriever.item_vectors[60], expected, atol=1e-5)
        # A user who, by the model's scores over the grown catalogue, has n1 among the top ten gets it back.
        users = model.all_representations("user")[1:].numpy()
    scores = users @ retriever.item_vectors.T
    for row in range(len(users)):
        for split in retriever.seen:
            indptr, seen = retriever.seen[split]
            scores[row, seen[indptr[row]:indptr[row + 1]]] = -np.inf
    rank_of_new = (scores > scores[:, [60]]).sum(1)
    user = retriever.users["id"][int(rank_of_new.argmin())]
    assert rank_of_new.min() < K
    for exact in (True, False):
        assert ("n1", "zebra quokka") in [(item, title) for item, _, title in retriever.recommend(user=user, exact=exact)]
    main(["recommend", str(folder), "--user", user])
    assert any(line.split("\t")[1:4:2] == ["n1", "zebra quokka"] for line in capsys.readouterr().out.splitlines())
    # Adding them again is refused, naming the first.
    with pytest.raises(ValueError, match="line 2: item 'n1' is already in the index"):
        retriever.add_items(item_file)


def test_bad_input_is_named(trained, tmp_path):
    checkpoint = trained("TwoTowerSplit")
    folder = tmp_path / "index"
    retriever = export(checkpoint, folder)
    with pytest.raises(ValueError, match=r"user 'u99' is not among the 40 users of dataset 'tiny' \(user_id\): embed a new user"):
        retriever.recommend(user="u99")
    with pytest.raises(ValueError, match="features names field 'rating', which is not a side field of the user tower "
                                         r"\(endo_fields.user.side: age, gender, favourite; its atoms besides the id: none\)"):
        retriever.recommend(features={"age": "18-25", "rating": "5"})
    with pytest.raises(ValueError, match="features names the user id field 'user_id'"):
        retriever.recommend(features={"user_id": "u1"})
    with pytest.raises(ValueError, match="a user .* or features .*, and not both"):
        retriever.recommend(user="u1", features={"age": "18-25"})
    with pytest.raises(ValueError, match="k is 0: the number of items to recommend"):
        retriever.recommend(user="u1", k=0)
    with pytest.raises(ValueError, match="exclude_seen names split 'training'; the index's splits are train, valid, test"):
        retriever.recommend(user="u1", exclude_seen=["training"])
    with pytest.raises(ValueError, match="features names field 'price', which is not a side field of the user tower"):
        retriever.recommend(features={"price": "3"})
    # The item file must carry the tower's fields, typed as the dataset types them, with new ids.
    missing = write_item_file(tmp_path / "a.item", [["n1", "red"]], header="item_id:token\ttitle:token_seq\n")
    with pytest.raises(ValueError, match=r"a.item' lacks field 'class' \(token_seq\), which the item tower reads"):
        retriever.add_items(missing)
    retyped = write_item_file(tmp_path / "b.item", [["n1", "red", "drama", "x"]],
                              header="item_id:token\ttitle:token_seq\tclass:token_seq\tprice:token\n")
    with pytest.raises(ValueError, match="types field 'price' as token; the dataset's is float"):
        retriever.add_items(retyped)
    known = write_item_file(tmp_path / "c.item", [["n1", "red", "drama", "3"], ["i4", "red", "drama", "3"]])
    with pytest.raises(ValueError, match="line 3: item 'i4' is already in the index"):
        retriever.add_items(known)
    not_a_number = write_item_file(tmp_path / "d.item", [["n1", "red", "drama", "cheap"]])
    with pytest.raises(ValueError, match="item field 'price' \\(float\\) has value 'cheap', not a number"):
        retriever.add_items(not_a_number)
    assert retriever.metadata["items"] == 60  # nothing was added
    with pytest.raises(FileNotFoundError, match="is no retrieval index"):
        Retriever.load(tmp_path)


def test_a_checkpoint_of_another_dataset_model_or_training_is_refused(trained, tmp_path, capsys):
    checkpoint = trained("TwoTowerSplit")
    folder = tmp_path / "index"
    export(checkpoint, folder)
    stored = read_checkpoint(checkpoint)
    other_dataset = tmp_path / "other-dataset.pth"
    stored["config"]["dataset"] = "ml-100k"
    torch.save(stored, other_dataset)
    with pytest.raises(ValueError, match="is of dataset 'ml-100k', but the index was exported from dataset 'tiny'"):
        Retriever.load(folder, checkpoint=other_dataset)
    with pytest.raises(SystemExit) as stopped:
        main(["recommend", str(folder), "--feature", "age=18-25", "--checkpoint", str(other_dataset)])
    assert stopped.value.code == 2 and "is of dataset 'ml-100k'" in capsys.readouterr().err
    stored = read_checkpoint(checkpoint)
    stored["state_dict"] = {name: tensor + 1 for name, tensor in stored["state_dict"].items()}
    retrained = tmp_path / "retrained.pth"
    torch.save(stored, retrained)
    with pytest.raises(ValueError, match="is not the one the index was exported from \\(its sha256 differs\\)"):
        Retriever.load(folder, checkpoint=retrained)
    bpr = trained("BPR")
    with pytest.raises(ValueError, match="is of model 'BPR', but the index was exported from model 'TwoTowerSplit'"):
        Retriever.load(folder, checkpoint=bpr)
    # A checkpoint moved after the export: pass its new path.
    moved = tmp_path / "moved.pth"
    os.rename(checkpoint, moved)
    try:
        with pytest.raises(FileNotFoundError, match="does not exist: new users and items are embedded by the checkpoint"):
            Retriever.load(folder).recommend(features={"age": "18-25"})
        assert Retriever.load(folder, checkpoint=moved).recommend(features={"age": "18-25"}, k=3)
    finally:
        os.rename(moved, checkpoint)


def test_id_models_refuse_new_users_and_items(trained, tmp_path):
    retriever = export(trained("BPR"), tmp_path / "index")
    assert retriever.metadata["representation"] == "user_embedding · item_embedding"
    with pytest.raises(ValueError, match="a new user: BPR embeds users and items by id alone"):
        retriever.recommend(features={"age": "18-25"})
    item_file = write_item_file(tmp_path / "new.item", [["n1", "red", "drama", "3"]])
    with pytest.raises(ValueError, match="adding items from .* BPR embeds users and items by id alone"):
        retriever.add_items(item_file)
    with pytest.raises(ValueError, match="BPR embeds users by id alone, so a new user needs a tower model"):
        retriever.recommend(user="u99")


@pytest.mark.parametrize("name, reason", [
    ("EASE", "item-by-item weight matrix"),
    ("ItemKNN", "similarity to the user's own items"),
    ("NeuMF", "through an MLP over the concatenated user and item embeddings"),
])
def test_models_that_do_not_score_by_an_inner_product_are_refused_before_anything_loads(name, reason, trained, tmp_path, monkeypatch, capsys):
    checkpoint = trained(name, epochs=1)

    def loads(path):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(retrieval, "load_model", loads)
    with pytest.raises(ValueError, match=f"model {name} cannot be exported for retrieval: it .*{reason}"):
        Retriever.from_checkpoint(checkpoint)
    with pytest.raises(SystemExit) as stopped:
        main(["export", checkpoint, str(tmp_path / "index")])
    assert stopped.value.code == 2 and f"error: model {name} cannot be exported" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "index")


def test_a_missing_file_or_one_that_is_no_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    for path, message in ((tmp_path / "none.pth", "none.pth' does not exist"),
                          (tmp_path / "notes.pth", "notes.pth' is no checkpoint torch's safe loader reads")):
        with pytest.raises(SystemExit) as stopped:
            main(["export", str(path), str(tmp_path / "index")])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "index")


def test_other_models_are_refused_with_the_reason_and_the_exported_models():
    with pytest.raises(ValueError, match="model SASRec cannot be exported for retrieval: a sequential model embeds"):
        exported_kind("SASRec")
    with pytest.raises(ValueError, match="model NGCF cannot be exported for retrieval: it is not known to score .*; exported models: "
                                         "EndoDecouple, TwoTowerConcat, TwoTowerSplit, BPR, LightGCN, DICE, MF, MFIPS, MFDR, RelMF"):
        exported_kind("NGCF")
    with pytest.raises(ValueError, match="model 'NoSuchModel' is neither a recbole_endo model"):
        exported_kind("NoSuchModel")


def test_an_index_is_replaced_whole_or_not_at_all(trained, tmp_path, monkeypatch):
    checkpoint = trained("TwoTowerSplit")
    folder = tmp_path / "index"
    export(checkpoint, folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    item_file = write_item_file(tmp_path / "new.item", [["n1", "red", "drama", "3"]])

    def fails(index, path):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", fails)
    with pytest.raises(SystemExit):
        main(["add-items", str(folder), item_file])
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".index")]  # no half-written folder beside it
    # A folder that is not an index is never replaced.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="'.*notes' exists and is not a retrieval index"):
        Retriever.load(folder).save(other)
    assert os.listdir(other) == ["keep.txt"]
