"""``dcac bench eval``: our ranking evaluation against torchreid's, at real dataset sizes.

(a) Market-1501 size (3,368 queries x 15,913 gallery): torchreid's ``metrics.evaluate_rank``
and ours on the same distance matrix: seconds, speed-up, largest CMC/mAP difference.
(b) MSMT17 size (11,659 x 82,161, 512-d float32 features): :func:`evaluate_features` end
to end (distances included) on CPU, in a fresh process: seconds and peak resident memory
(imports and features included; the resident memory when evaluation starts is reported
beside it).

The data are synthetic but shaped like the real test splits: identity, camera and
distractor counts as in the datasets; a feature is its identity's centre plus a camera
shift plus noise, so matches are closer on average yet often outranked (seed 0 scores like
a mid-strength model: Market rank-1 0.89, mAP 0.51; MSMT17 rank-1 0.93, mAP 0.47), and
distances are continuous (float64 for (a), so no ties and torchreid's unstable sort agrees
with our stable one).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, NamedTuple, Tuple

import numpy as np
import torch

from .memory import peak_rss_kb, proc_status_kb

TARGETS = {"market_speedup_min": 40.0, "msmt_seconds_max": 20.0, "msmt_peak_rss_gb_max": 4.0}
FEATURE_DIM = 512
# Noise and camera shift relative to a unit-variance identity centre (per dimension).
NOISE = 2.0
CAMERA_SHIFT = 0.5


class SplitShape(NamedTuple):
    """Sizes of a test split; distractors are gallery images of identity 0, never queried."""

    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int
    num_distractors: int


MARKET = SplitShape(num_query=3368, num_gallery=15913, num_ids=750, num_cams=6, num_distractors=2798)
MSMT = SplitShape(num_query=11659, num_gallery=82161, num_ids=3060, num_cams=15, num_distractors=0)


class Split(NamedTuple):
    """Features and labels of a synthetic test split."""

    query: torch.Tensor
    gallery: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def run_eval_benchmark(seed: int = 0, include_msmt: bool = True, include_market: bool = True,
                       torchreid_reference: bool = True) -> Dict[str, object]:
    """Runs the selected parts; returns their figures, the targets and whether each is met
    (``None`` where the part, or torchreid's reference timing, was skipped)."""
    figures: Dict[str, object] = {"seed": seed, "torch_threads": torch.get_num_threads(),
                                  "cpu_count": os.cpu_count(), "targets": dict(TARGETS)}
    met: Dict[str, object] = {"market_speedup": None, "msmt_seconds": None, "msmt_peak_rss": None}
    if include_market:
        figures["market"] = market_benchmark(seed, torchreid_reference)
        speedup = figures["market"].get("speedup")
        met["market_speedup"] = None if speedup is None else speedup >= TARGETS["market_speedup_min"]
    if include_msmt:
        figures["msmt"] = msmt_benchmark_subprocess(seed)
        met["msmt_seconds"] = figures["msmt"]["seconds"] <= TARGETS["msmt_seconds_max"]
        met["msmt_peak_rss"] = figures["msmt"]["peak_rss_gb"] <= TARGETS["msmt_peak_rss_gb_max"]
    figures["targets_met"] = met
    return figures


def market_benchmark(seed: int = 0, torchreid_reference: bool = True) -> Dict[str, object]:
    """(a): both evaluations on one Market-1501-sized float64 distance matrix."""
    from torchreid import metrics

    from ..evaluation import evaluate_rank, evaluate_rank_full

    _progress(f"market: building a {MARKET.num_query} x {MARKET.num_gallery} distance matrix")
    split = synthetic_split(MARKET, seed, dtype=torch.float64)
    distmat = metrics.compute_distance_matrix(split.query, split.gallery, "euclidean").numpy()
    labels = (split.q_pids, split.g_pids, split.q_camids, split.g_camids)
    _progress("market: ours")
    ours_seconds, (cmc, mAP) = _timed(lambda: evaluate_rank(distmat, *labels))
    full = evaluate_rank_full(distmat, *labels)
    result: Dict[str, object] = {
        "shape": list(distmat.shape), "dtype": str(distmat.dtype), "ours_seconds": ours_seconds,
        "rank1": float(cmc[0]), "mAP": mAP, "mINP": full.mINP,
        "num_valid_queries": full.num_valid_queries}
    if torchreid_reference:
        _progress("market: torchreid's evaluate_rank (about a minute)")
        ref_seconds, (ref_cmc, ref_mAP) = _timed(lambda: metrics.evaluate_rank(distmat, *labels))
        result.update(torchreid_seconds=ref_seconds, speedup=ref_seconds / ours_seconds,
                      max_abs_diff_cmc=float(np.abs(np.asarray(ref_cmc) - cmc).max()),
                      abs_diff_mAP=abs(float(ref_mAP) - mAP))
    _progress(f"market: {json.dumps(result)}")
    return result


def msmt_benchmark_subprocess(seed: int = 0) -> Dict[str, object]:
    """(b) in a fresh Python process, so that earlier work here does not inflate its peak."""
    _progress("msmt: starting a fresh process")
    code = ("import json, sys; from dcac_plugin.benchmarks.eval_bench import msmt_benchmark; "
            "print(json.dumps(msmt_benchmark(int(sys.argv[1]))))")
    # stderr (progress lines) goes straight through; stdout carries the JSON figures.
    done = subprocess.run([sys.executable, "-c", code, str(seed)], stdout=subprocess.PIPE,
                          text=True, check=True, env=_child_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def msmt_benchmark(seed: int = 0) -> Dict[str, object]:
    """(b) in this process: features built, then :func:`evaluate_features` timed on CPU."""
    from ..evaluation import evaluate_features

    split = synthetic_split(MSMT, seed, dtype=torch.float32)
    rss_now_kb = proc_status_kb("VmRSS")
    _progress(f"msmt: evaluating {MSMT.num_query} x {MSMT.num_gallery} from {FEATURE_DIM}-d features")
    seconds, result = _timed(lambda: evaluate_features(split.query, split.gallery, split.q_pids,
                                                       split.g_pids, split.q_camids, split.g_camids))
    peak_kb = peak_rss_kb()
    figures = {"num_query": MSMT.num_query, "num_gallery": MSMT.num_gallery,
               "feature_dim": FEATURE_DIM, "seconds": seconds,
               "peak_rss_gb": peak_kb / 2 ** 20,
               "rss_at_evaluation_start_gb": None if rss_now_kb is None else rss_now_kb / 2 ** 20,
               "rank1": float(result.cmc[0]), "mAP": result.mAP, "mINP": result.mINP,
               "num_valid_queries": result.num_valid_queries}
    _progress(f"msmt: {json.dumps(figures)}")
    return figures


def synthetic_split(shape: SplitShape, seed: int, dtype: torch.dtype = torch.float32,
                    dim: int = FEATURE_DIM) -> Split:
    """Features ``centre[pid] + CAMERA_SHIFT * camera[cam] + NOISE * noise``; every test
    identity is queried and in the gallery, distractors each get a centre of their own."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, shape.num_ids + 1)
    q_pids = rng.permutation(np.resize(ids, shape.num_query))
    g_pids = np.concatenate([rng.permutation(np.resize(ids, shape.num_gallery - shape.num_distractors)),
                             np.zeros(shape.num_distractors, dtype=np.int64)])
    q_camids = rng.integers(0, shape.num_cams, shape.num_query)
    g_camids = rng.integers(0, shape.num_cams, shape.num_gallery)
    centres = rng.standard_normal((shape.num_ids + 1, dim), dtype=np.float32)
    cameras = CAMERA_SHIFT * rng.standard_normal((shape.num_cams, dim), dtype=np.float32)
    g_centres = centres[g_pids]
    g_centres[shape.num_gallery - shape.num_distractors:] = rng.standard_normal(
        (shape.num_distractors, dim), dtype=np.float32)
    query = _features(rng, centres[q_pids], cameras[q_camids])
    gallery = _features(rng, g_centres, cameras[g_camids])
    return Split(torch.from_numpy(query).to(dtype), torch.from_numpy(gallery).to(dtype),
                 q_pids, g_pids, q_camids, g_camids)


def _features(rng: np.random.Generator, centres: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Adds the camera shift and noise in place, a slab at a time (bounded temporaries)."""
    slab = 8192
    for start in range(0, centres.shape[0], slab):
        part = centres[start:start + slab]
        part += shifts[start:start + slab]
        part += NOISE * rng.standard_normal(part.shape, dtype=np.float32)
    return centres


def _timed(fn: Callable[[], object]) -> Tuple[float, object]:
    """``(seconds, result)`` of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _child_env() -> Dict[str, str]:
    """This environment, with this package importable whatever the working directory."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _progress(message: str) -> None:
    """Progress on stderr, so that stdout stays free for the JSON figures."""
    print(f"[bench eval] {message}", file=sys.stderr, flush=True)
