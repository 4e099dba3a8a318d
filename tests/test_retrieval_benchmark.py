"""The retrieval benchmark's parts on tiny catalogues: recall, percentiles and NDCG computed as
defined, the index and full_sort_predict paths agreeing, a generated item file that add_items
takes, and tables with the expected rows. No timing is asserted (the machine's load decides it)."""

import math
import os

import numpy as np
import pytest
from recbole.utils import FeatureType

from conftest import DATA_DIR, TINY_YAML
from recbole_endo.experiments import retrieval_benchmark as bench
from recbole_endo.quick_start import run_recbole_endo
from recbole_endo.files import read_atomic_file
from recbole_endo.retrieval import Retriever

LARGE = bench.large_catalogue(300)


@pytest.fixture(scope="module")
def vectors():
    """300 item vectors and 25 query vectors of 16 dimensions (seeded Gaussians)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((25, 16)).astype(np.float32)


def test_the_exact_index_finds_its_own_top_k_one_query_at_a_time_and_so_does_full_sort_predict(vectors, tmp_path):
    items, queries = vectors
    index, built = bench.timed_build(items, "exact", str(tmp_path / "exact.faiss"))
    assert built["index_mib"] > 0 and built["seconds"] >= 0
    _, exact_rows, exact_scores = bench.batched_queries(index, queries)
    seconds, rows, scores = bench.single_queries(index, queries)
    assert len(seconds) == len(queries) and rows.shape == (len(queries), bench.K)
    assert bench.recall_at_k(rows, scores, exact_rows, exact_scores) == 1.0
    _, full_rows, full_scores = bench.full_sort_top_k(queries, items, chunk_scores=1000)  # several chunks
    assert np.array_equal(full_rows, exact_rows) and np.allclose(full_scores, exact_scores, atol=1e-5)
    brute = np.argsort(-(queries @ items.T), axis=1)[:, : bench.K]
    assert np.array_equal(brute, exact_rows)


def test_recall_counts_the_exact_top_k_found_a_tie_with_the_kth_score_and_no_unfilled_place():
    exact_rows, exact_scores = [[0, 1, 2], [0, 1, 2]], [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]
    # Query 1: item 2 missed for item 5 (score 0.5): 2 of 3. Query 2: item 7 ties item 2's score: 3 of 3.
    found_rows, found_scores = [[0, 2, 5], [0, 7, 1]], [[3.0, 1.0, 0.5], [3.0, 1.0, 2.0]]
    assert bench.recall_at_k(found_rows, found_scores, exact_rows, exact_scores) == pytest.approx((2 / 3 + 1) / 2)
    # A place an approximate index left unfilled (-1, faiss's lowest score) is a miss.
    unfilled = bench.recall_at_k([[0, -1, -1]], [[3.0, -3.4e38, -3.4e38]], [[0, 1, 2]], [[3.0, 2.0, 1.0]])
    assert unfilled == pytest.approx(1 / 3)
    assert bench.has_tie([3.0, 2.0, 2.0 - 1e-7]) and not bench.has_tie([3.0, 2.0, 1.0])


def test_latency_percentiles_are_numpys_linear_interpolation_in_milliseconds():
    seconds = [millisecond / 1000 for millisecond in range(1, 101)]  # 1 ... 100 ms
    p50, p99 = bench.latency_percentiles(seconds)
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.01)
    assert bench.latency_percentiles([0.002] * 7) == pytest.approx([2.0, 2.0])


def test_ndcg_is_recboles_binary_ndcg():
    # Hits at ranks 2 and 4 of 3 relevant items; the ideal has them at ranks 1-3.
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert bench.ndcg_at_k([9, 1, 8, 2], {1, 2, 3}, k=10) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert bench.ndcg_at_k([1, 2], {1, 2}, k=10) == 1.0
    # The cut-off: a hit below rank k counts for nothing, and the ideal counts at most k hits.
    assert bench.ndcg_at_k([5, 6, 1], {1, 2, 3}, k=2) == 0.0


def query_rows(vectors, tmp_path, threads=1):
    items, queries = vectors
    indexes = {kind: bench.timed_build(items, kind, str(tmp_path / f"{kind}.faiss"))[0] for kind in ("exact", "hnsw", "ivf")}
    return bench.measure_queries(LARGE, items, queries, indexes, threads)


def test_query_rows_cover_each_index_and_setting_with_recall_against_exact(vectors, tmp_path):
    rows = query_rows(vectors, tmp_path)
    single = {(row["index"], row["parameter"]): row for row in rows if row["measure"] == "single"}
    # Each sweep, with the exporter's setting added where the sweep lacks it.
    assert sorted(single) == sorted(
        [("IndexFlatIP", "")]
        + [("IndexHNSWFlat", f"efSearch={value}") for value in {*bench.EF_SEARCH_SWEEP, bench.HNSW_EF_SEARCH}]
        + [("IndexIVFFlat", f"nprobe={value}") for value in {*bench.NPROBE_SWEEP, bench.IVF_NPROBE}]
    )
    assert single[("IndexFlatIP", "")]["recall_at_10"] == 1.0
    # 300 items: HNSW's graph and IVF's lists at nprobe 8 cover all of them, so they search exactly.
    assert single[("IndexHNSWFlat", "efSearch=256")]["recall_at_10"] == 1.0
    assert single[("IndexIVFFlat", "nprobe=8")]["recall_at_10"] == 1.0
    for row in single.values():
        assert row["users"] == 25 and 0 < row["p50_ms"] <= row["p99_ms"] and row["qps"] > 0
    # Batched: the approximate indexes at the exporter's setting and at the cheapest reaching recall 0.99.
    batched = {(row["index"], row["parameter"]): row for row in rows if row["measure"] == "batched"}
    cheapest_hnsw = min(value for value in bench.EF_SEARCH_SWEEP
                        if single[("IndexHNSWFlat", f"efSearch={value}")]["recall_at_10"] >= 0.99)
    assert sorted(batched) == sorted([
        ("full_sort_predict", "batch=25"), ("IndexFlatIP", "batch=25"),
        ("IndexHNSWFlat", f"batch=25, efSearch={bench.HNSW_EF_SEARCH}"),
        ("IndexHNSWFlat", f"batch=25, efSearch={cheapest_hnsw}"),
        ("IndexIVFFlat", f"batch=25, nprobe={bench.IVF_NPROBE}"), ("IndexIVFFlat", "batch=25, nprobe=8"),
    ])
    full_sort = batched[("full_sort_predict", "batch=25")]
    assert full_sort["speedup"] == 1.0 and "recall_at_10" not in full_sort
    assert batched[("IndexFlatIP", "batch=25")]["recall_at_10"] == 1.0
    hnsw = batched[("IndexHNSWFlat", f"batch=25, efSearch={bench.HNSW_EF_SEARCH}")]
    assert hnsw["speedup"] == pytest.approx(full_sort["seconds"] / hnsw["seconds"]) and hnsw["recall_at_10"] == 1.0


def test_outputs_hold_the_tables_the_targets_and_the_plot(vectors, tmp_path):
    rows = [{**row, "run": 2} for row in query_rows(vectors, tmp_path, threads=2)]
    rows.append({"catalogue": LARGE, "items": 300, "measure": "build", "index": "IndexHNSWFlat", "parameter": "",
                 "threads": 1, "seconds": 0.5, "rss_growth_mib": 3.0, "index_mib": 1.0, "beside": "a study"})
    rows += [
        {"catalogue": "ml-100k", "items": 1682, "measure": "ndcg", "index": "RecBole evaluation", "parameter": "k=10",
         "ndcg_at_10": 0.25, "users": 943, "note": "EndoDecouple"},
        {"catalogue": "ml-100k", "items": 1682, "measure": "ndcg", "index": "exact index", "parameter": "k=10",
         "ndcg_at_10": 0.25, "users": 943, "untied_differences": 0, "note": "2 of 943 users differ, 2 of them tied"},
    ]
    # Run 1's rows were all measured again by run 2: it is not listed.
    runs = [{"command": "python -m recbole_endo.experiments.retrieval_benchmark --threads=2", "commit": "0ld0000",
             "threads": [2], "build_threads": 1, "beside": "", "started": "2026-01-01 00:00", "load_average": 2.5},
            {"command": "python -m recbole_endo.experiments.retrieval_benchmark", "commit": "abc1234",
             "threads": [2], "build_threads": 1, "beside": "", "started": "2026-01-01 00:10", "load_average": 0.25}]
    output = tmp_path / "out"
    bench.write_outputs(rows, runs, str(output), LARGE)
    # Written through temporary files renamed into place: none is left behind.
    assert sorted(os.listdir(output)) == ["recall_qps.png", "retrieval.csv", "retrieval.md"]
    assert (output / "recall_qps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (output / "retrieval.md").read_text()
    assert f"| {LARGE} | 300 | IndexHNSWFlat | 1 | 0.50 | 3 | 1 | a study |" in table
    for value in bench.EF_SEARCH_SWEEP:
        assert f"| {LARGE} | IndexHNSWFlat | efSearch={value} | 2 |" in table
    assert f"| {LARGE} | full_sort_predict | batch=25 | 2 |" in table
    assert "| exact index | 0.2500 | 943 | 2 of 943 users differ, 2 of them tied |" in table
    assert ("2. `python -m recbole_endo.experiments.retrieval_benchmark` at commit abc1234, 2026-01-01 00:10 "
            "(load average 0.25 as it began): query threads [2]") in table
    assert "0ld0000" not in table
    # On 300 items every approximate setting finds the exact top 10: the recall target's line names one.
    assert f"- {LARGE}, 2 thread(s): recall@10 >= 0.99 at >= 1,000 single queries/s: **" in table
    assert f"- {LARGE}, 2 thread(s): batched queries >= 10x full_sort_predict: **" in table
    assert "- ml-100k test NDCG@10, exported exact index = RecBole's evaluation within ties: **met**; 0.2500" in table
    with open(output / "retrieval.csv") as file:
        header = file.readline().strip().split(",")
    assert header == bench.COLUMNS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """EndoDecouple trained on the tiny data (two epochs): RecBole's result and the exported retriever."""
    folder = tmp_path_factory.mktemp("tiny")
    with bench.inside(folder):
        result = run_recbole_endo(model="EndoDecouple", dataset="tiny", config_file_list=[TINY_YAML],
                                  config_dict={"data_path": DATA_DIR, "checkpoint_dir": str(folder / "saved")})
        retriever = Retriever.from_checkpoint(result["checkpoint"])
    return result, retriever, folder


def test_the_exact_index_gives_recboles_test_ndcg_user_by_user_within_ties(tiny_run):
    result, retriever, _ = tiny_run
    users, values = result["per_user"]["ndcg@10"]
    training = {"model": "EndoDecouple", "options": "{}", "best_epoch": result["best_epoch"],
                "test_ndcg": result["test_result"]["ndcg@10"],
                "per_user_ndcg": {str(user): float(value) for user, value in zip(users, values)}}
    recbole, index = bench.ndcg_rows(training, retriever)
    assert index["untied_differences"] == 0 and index["users"] == recbole["users"] == len(users)
    assert recbole["ndcg_at_10"] == pytest.approx(float(np.mean(values)))
    assert 0 < index["ndcg_at_10"] <= 1


def test_the_generated_item_file_draws_the_item_towers_fields_and_add_items_takes_it(tiny_run):
    _, retriever, folder = tiny_run
    path = bench.new_item_file(retriever, str(folder / "new.item"), 50, seed=1)
    config, _, (dataset, *_) = retriever.model()
    types, frame = read_atomic_file(path, config)
    _, items = read_atomic_file(os.path.join(DATA_DIR, "tiny", "tiny.item"), config)
    assert list(types) == ["item_id", "title", "class", "price"]  # the id, then the tower's atoms and sides
    assert types["title"] == FeatureType.TOKEN_SEQ and types["price"] == FeatureType.FLOAT
    assert frame["item_id"].tolist() == [f"new{number}" for number in range(1, 51)]
    title_words = {word for title in items["title"].dropna() for word in title.split()}
    assert {word for title in frame["title"].dropna() for word in title.split()} <= title_words
    assert set(frame["price"]) <= set(items["price"])
    before = len(retriever.item_vectors)
    with bench.inside(folder):
        added = retriever.add_items(path)
    assert added == frame["item_id"].tolist() and len(retriever.item_vectors) == before + 50
