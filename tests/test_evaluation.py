import os

import numpy as np
import pytest
import torch
from torchreid import metrics

from dcac_plugin import evaluation
from dcac_plugin.evaluation import RankResult, evaluate_features, evaluate_rank, evaluate_rank_full


def _labels(rng, num_query, num_gallery, num_ids, num_cams):
    """Random labels with gallery-only ids -1 and 0 (junk/distractor-like), one query whose
    id is in the gallery only under the query's camera, and one whose id is absent."""
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(-1, num_ids + 1, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    q_pids[0], g_pids[:2], g_camids[:2] = num_ids + 1, num_ids + 1, q_camids[0]
    q_pids[1] = num_ids + 2
    return q_pids, g_pids, q_camids, g_camids


def _tie_free(rng, num_query, num_gallery, dtype):
    """Distinct distances (a permutation of integers, exact in float32)."""
    return rng.permutation(num_query * num_gallery).reshape(num_query, num_gallery).astype(dtype)


def _assert_same_result(ours: RankResult, expected: RankResult):
    np.testing.assert_allclose(ours.cmc, expected.cmc, rtol=0, atol=1e-6)
    assert ours.mAP == pytest.approx(expected.mAP, abs=1e-6)
    assert ours.mINP == pytest.approx(expected.mINP, abs=1e-6)
    assert ours.num_valid_queries == expected.num_valid_queries


# torchreid's reference paths: its exact Python evaluation always, and its compiled Cython one
# where the installed torchreid has it (upstream deep-person-reid built from source; PyPI's 0.2.5
# has none). The Cython path casts distances to float32 and sums CMC and AP in float32.
TORCHREID_PATHS = ["python"] + (["cython"] if evaluation.torchreid_has_cython() else [])


def _reference_tolerance(path: str, num_query: int) -> float:
    """1e-6 for the Python path (float64 sums; our CMC is float32). For the Cython path, float32
    accumulation over the queries: each of up to ``num_query`` additions rounds by at most one
    float32 epsilon relative to a sum of at most ``num_query``, i.e. ``num_query * eps`` after the mean."""
    return 1e-6 if path == "python" else max(1e-6, num_query * float(np.finfo(np.float32).eps))


@pytest.mark.parametrize("path", TORCHREID_PATHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_query,num_gallery,num_ids", [(20, 100, 12), (150, 600, 60), (400, 2000, 150)])
def test_equals_torchreid_on_tie_free_inputs(num_query, num_gallery, num_ids, dtype, path):
    rng = np.random.default_rng(num_gallery)
    labels = _labels(rng, num_query, num_gallery, num_ids, num_cams=4)
    distmat = _tie_free(rng, num_query, num_gallery, dtype)  # integers: exact in float32 too
    ref_cmc, ref_mAP = metrics.evaluate_rank(distmat, *labels, max_rank=50, use_cython=path == "cython")
    cmc, mAP = evaluate_rank(distmat, *labels, max_rank=50)
    assert cmc.dtype == np.float32 and cmc.shape == (50,)
    tolerance = _reference_tolerance(path, num_query)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=tolerance)
    assert mAP == pytest.approx(ref_mAP, abs=tolerance)
    assert evaluate_rank_full(distmat, *labels).num_valid_queries < num_query  # invalid ones skipped


def test_float64_distances_closer_than_float32_resolution_keep_their_order():
    # All distances round to one or two float32 values, so ranks come from exact counting.
    rng = np.random.default_rng(3)
    labels = _labels(rng, 40, 300, 20, num_cams=3)
    distmat = 1.0 + _tie_free(rng, 40, 300, np.float64) * 1e-13
    # torchreid's Python path keeps float64; its Cython path would round these into ties.
    ref_cmc, ref_mAP = metrics.evaluate_rank(distmat, *labels, max_rank=20, use_cython=False)
    cmc, mAP = evaluate_rank(distmat, *labels, max_rank=20)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(ref_mAP, abs=1e-6)


def test_cuhk03_mode_reproduces_torchreid_draws():
    rng = np.random.default_rng(7)
    labels = _labels(rng, 120, 500, 40, num_cams=2)
    distmat = _tie_free(rng, 120, 500, np.float32)
    np.random.seed(11)
    # torchreid's Python path, compared exactly (draws and result); its Cython path makes the same
    # draws but sums the sampled CMC in float32, one ulp off.
    ref_cmc, ref_mAP = metrics.evaluate_rank(distmat, *labels, max_rank=20, use_metric_cuhk03=True, use_cython=False)
    ref_next = np.random.rand()
    np.random.seed(11)
    cmc, mAP = evaluate_rank(distmat, *labels, max_rank=20, use_metric_cuhk03=True)
    assert np.array_equal(cmc, ref_cmc)
    assert mAP == pytest.approx(ref_mAP, abs=1e-6)
    assert np.random.rand() == ref_next  # same number of draws consumed


def test_minp_map_and_cmc_on_a_hand_worked_example():
    # Query 0 (pid 1, cam 0), gallery by distance: match, other, junk, other, match, other.
    # Junk removed, its matches sit at ranks 1 and 4: AP = (1/1 + 2/4)/2, INP = 2/4.
    # Query 1 (pid 2, cam 0): one match, at rank 3: AP = INP = 1/3.
    g_pids = np.array([1, 9, 1, 8, 1, 7, 2])
    g_camids = np.array([1, 1, 0, 1, 2, 1, 1])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        [0.5, 0.1, 0.6, 0.2, 0.7, 0.4, 0.3]])
    result = evaluate_rank_full(distmat, np.array([1, 2]), g_pids, np.array([0, 0]), g_camids, max_rank=4)
    assert result.mAP == pytest.approx(((1 + 2 / 4) / 2 + 1 / 3) / 2)
    assert result.mINP == pytest.approx((2 / 4 + 1 / 3) / 2)
    np.testing.assert_array_equal(result.cmc, np.array([0.5, 0.5, 1.0, 1.0], dtype=np.float32))
    assert result.num_valid_queries == 2


def test_ties_rank_in_gallery_index_order():
    # All distances equal: the order is gallery index order, so the matches (indices 1 and 4;
    # index 3 is junk) have ranks 2 and 4 once junk is removed: AP = (1/2 + 2/4)/2 = 0.5.
    g_pids = np.array([5, 1, 7, 1, 1])
    g_camids = np.array([1, 1, 1, 0, 2])
    labels = (np.array([1]), g_pids, np.array([0]), g_camids)
    result = evaluate_rank_full(np.zeros((1, 5), dtype=np.float32), *labels, max_rank=5)
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1, 1])
    # Identical features tie every score in the same way.
    features = evaluate_features(torch.zeros(1, 4), torch.zeros(5, 4), *labels, max_rank=5)
    _assert_same_result(features, result)


def test_negative_zero_ties_with_zero():
    # The match (index 1) is at -0.0, the other entry at 0.0: a tie, so index order puts it second.
    result = evaluate_rank_full(np.array([[0.0, -0.0]], dtype=np.float32), np.array([1]), np.array([2, 1]),
                                np.array([0]), np.array([1, 1]), max_rank=2)
    np.testing.assert_array_equal(result.cmc, [0, 1])


def test_no_valid_query_raises():
    # The only query's identity is in the gallery only under the query's camera.
    with pytest.raises(ValueError, match="No valid query"):
        evaluate_rank(np.random.rand(1, 3), np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([0, 1, 1]))


def test_nan_at_a_valid_match_raises():
    distmat = np.array([[0.1, np.nan]])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(distmat, np.array([1]), np.array([2, 1]), np.array([0]), np.array([1, 1]))


def test_torch_numpy_and_list_inputs_agree():
    rng = np.random.default_rng(5)
    q_pids, g_pids, q_camids, g_camids = _labels(rng, 30, 120, 15, num_cams=3)
    distmat = _tie_free(rng, 30, 120, np.float32)
    expected = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids)
    from_torch = evaluate_rank_full(torch.from_numpy(distmat), torch.from_numpy(q_pids), torch.from_numpy(g_pids),
                                    torch.from_numpy(q_camids), torch.from_numpy(g_camids))
    from_lists = evaluate_rank_full(distmat.tolist(), q_pids.tolist(), g_pids.tolist(), q_camids.tolist(),
                                    g_camids.tolist())
    _assert_same_result(from_torch, expected)
    _assert_same_result(from_lists, expected)


def _features(rng, num_query, num_gallery, num_ids, dim=16):
    labels = _labels(rng, num_query, num_gallery, num_ids, num_cams=3)
    centres = rng.standard_normal((num_ids + 3, dim))
    query = centres[labels[0]] + 0.8 * rng.standard_normal((num_query, dim))
    gallery = centres[labels[1]] + 0.8 * rng.standard_normal((num_gallery, dim))
    return torch.from_numpy(query), torch.from_numpy(gallery), labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_features_equal_rank_on_torchreid_distances(metric, chunk_size):
    # float64 features: distances far apart relative to rounding, so the orders agree.
    query, gallery, labels = _features(np.random.default_rng(2), 60, 400, 30)
    distmat = metrics.compute_distance_matrix(query, gallery, metric).numpy()
    expected = evaluate_rank_full(distmat, *labels, max_rank=30)
    result = evaluate_features(query, gallery, *labels, max_rank=30, metric=metric, chunk_size=chunk_size)
    _assert_same_result(result, expected)
    ref_cmc, ref_mAP = metrics.evaluate_rank(distmat, *labels, max_rank=30, use_cython=False)
    np.testing.assert_allclose(result.cmc, ref_cmc, rtol=0, atol=1e-6)
    assert result.mAP == pytest.approx(ref_mAP, abs=1e-6)


def test_float32_features_with_exact_distances_and_ties(monkeypatch):
    # Small integer features: every distance is exact in float32 and many tie, so ranking by
    # |g|^2 - 2<q, g> must reproduce the tie order of the full distance as well. A tiny block
    # budget splits each chunk into uneven blocks.
    rng = np.random.default_rng(4)
    labels = _labels(rng, 50, 300, 25, num_cams=3)
    query = torch.from_numpy(rng.integers(-2, 3, (50, 6))).float()
    gallery = torch.from_numpy(rng.integers(-2, 3, (300, 6))).float()
    distmat = metrics.compute_distance_matrix(query, gallery, "euclidean").numpy()
    expected = evaluate_rank_full(distmat, *labels, max_rank=20)
    monkeypatch.setattr(evaluation, "_BLOCK_ELEMENTS", 3 * 300)
    for chunk_size in (7, 50):
        _assert_same_result(evaluate_features(query, gallery, *labels, max_rank=20, chunk_size=chunk_size), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_blocks_key_chunks_and_threads_do_not_change_results(monkeypatch, dtype):
    # Integer features: many tied distances, so the keys' gallery-index order is exercised too.
    rng = np.random.default_rng(5)
    labels = _labels(rng, 50, 300, 25, num_cams=3)
    query = torch.from_numpy(rng.integers(-2, 3, (50, 6))).double()
    gallery = torch.from_numpy(rng.integers(-2, 3, (300, 6))).double()
    distmat = metrics.compute_distance_matrix(query, gallery, "euclidean").numpy().astype(dtype)
    expected = evaluate_rank_full(distmat, *labels, max_rank=20)  # one block, chunks of 7 rows on 2 threads
    threads = torch.get_num_threads()
    try:
        for budget, chunk_rows, num_threads in [(3 * 300, 1, 2), (17 * 300, 5, 2), (17 * 300, 64, 1), (1 << 25, 3, 1)]:
            monkeypatch.setattr(evaluation, "_CPU_MATRIX_BLOCK_ELEMENTS", budget)
            monkeypatch.setattr(evaluation, "_KEY_CHUNK_ROWS", chunk_rows)
            monkeypatch.setattr(evaluation, "_MIN_KEY_CHUNK_ROWS", 1)
            torch.set_num_threads(num_threads)
            _assert_same_result(evaluate_rank_full(distmat, *labels, max_rank=20), expected)
    finally:
        torch.set_num_threads(threads)


def test_features_cuhk03_mode_equals_distance_matrix_mode():
    query, gallery, labels = _features(np.random.default_rng(8), 40, 200, 20)
    distmat = metrics.compute_distance_matrix(query, gallery, "euclidean").numpy()
    np.random.seed(1)
    expected = evaluate_rank_full(distmat, *labels, max_rank=10, use_metric_cuhk03=True)
    np.random.seed(1)
    result = evaluate_features(query, gallery, *labels, max_rank=10, chunk_size=9, use_metric_cuhk03=True)
    _assert_same_result(result, expected)


def test_max_rank_is_capped_by_gallery_size():
    result = evaluate_rank_full(np.array([[0.2, 0.1, 0.3]]), np.array([1]), np.array([1, 2, 3]), np.array([0]),
                                np.array([1, 1, 1]), max_rank=50)
    np.testing.assert_array_equal(result.cmc, [0, 1, 1])


# Tensor inputs on every device this machine has (CUDA where present) give the NumPy-input result.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_tensors_on_each_device_give_the_numpy_result(device):
    query, gallery, labels = _features(np.random.default_rng(9), 50, 300, 25)
    expected = evaluate_features(query, gallery, *labels, chunk_size=16)
    device_labels = [torch.from_numpy(x).to(device) for x in labels]
    _assert_same_result(evaluate_features(query.to(device), gallery.to(device), *device_labels, chunk_size=16),
                        expected)
    distmat = metrics.compute_distance_matrix(query, gallery)
    _assert_same_result(evaluate_rank_full(distmat.to(device), *device_labels),
                        evaluate_rank_full(distmat.numpy(), *labels))


def test_benchmark_market_part_runs_and_reports():
    from dcac_plugin.benchmarks.eval_bench import run_eval_benchmark

    figures = run_eval_benchmark(include_msmt=False, torchreid_reference=False)
    market = figures["market"]
    assert market["shape"] == [3368, 15913] and market["num_valid_queries"] == 3368
    assert 0 < market["mAP"] < market["rank1"] <= 1
    assert figures["targets_met"] == {"market_speedup_vs_python": None, "market_speedup_vs_cython": None,
                                      "msmt_seconds": None, "msmt_peak_rss": None}


def test_benchmark_measures_torchreids_python_path_and_its_cython_path_where_built():
    import torchreid

    from dcac_plugin.benchmarks.eval_bench import SplitShape, market_benchmark

    small = SplitShape(num_query=60, num_gallery=400, num_ids=30, num_cams=3, num_distractors=40)
    figures = market_benchmark(torchreid_reference=True, shape=small)
    assert figures["torchreid"] == {"version": torchreid.__version__, "cython": evaluation.torchreid_has_cython(),
                                    "path": os.path.dirname(os.path.abspath(torchreid.__file__))}
    assert figures["max_abs_diff_cmc_python"] == 0 and figures["abs_diff_mAP_python"] < 1e-12
    assert figures["speedup_vs_python"] == figures["torchreid_python_seconds"] / figures["ours_seconds"]
    # The Cython path is measured exactly when the installed torchreid has it.
    assert ("torchreid_cython_seconds" in figures) == evaluation.torchreid_has_cython()


def test_fast_paths_are_timed_as_the_best_of_several_calls_after_a_warm_up(monkeypatch):
    from dcac_plugin.benchmarks import eval_bench

    clock = [0.0]
    durations = iter([5.0, 3.0, 1.0, 2.0])  # the warm-up call is the slowest, then three timed calls

    def call():
        clock[0] += next(durations)
        return clock[0]

    monkeypatch.setattr(eval_bench.time, "perf_counter", lambda: clock[0])
    seconds, result = eval_bench._best_of(call, 3)
    assert (seconds, result) == (1.0, 11.0)
    with pytest.raises(StopIteration):  # exactly one warm-up and three timed calls were made
        call()
