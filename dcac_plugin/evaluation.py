"""Vectorised, memory-bounded Re-ID ranking evaluation: CMC, mAP and mINP.

A drop-in for torchreid's ``metrics.evaluate_rank`` (same Market-1501 protocol, same
outputs) that is fast enough for MSMT17 (11,659 x 82,161), plus :func:`evaluate_features`,
which never holds the whole query x gallery distance matrix.

Protocol (as torchreid's): for each query, gallery entries with the query's pid *and*
camid are removed ("junk"); a query with no remaining same-pid entry is skipped; CMC is
averaged over the remaining ("valid") queries; AP is the mean, over a query's matches, of
the precision at each match; INP (Ye et al., "Deep Learning for Person Re-identification:
A Survey and Outlook") is the number of matches over the rank of the last (hardest) one.

How it stays fast: every score above depends only on the ranks of a query's matches, and
nothing after its hardest match changes them. So for each query we keep only the gallery
entries no farther than its hardest match ("candidates"), give each a 64-bit integer key
(row, distance, gallery index) whose integer order is the ranking order, sort all keys of
a block of queries with one flat sort, and look the matches up in it by binary search.

Ties: ranking uses a *stable* order: equal distances are ordered by gallery index (torchreid
uses NumPy's default, unstable quicksort, so on ties the two can differ; with continuous
distances they agree). ``-0.0`` and ``0.0`` are equal. NaN distances rank last, like NumPy
sorts them, and are rejected where they would decide a score (at a valid match).
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int], Sequence[float]]
IntArray = TypeVar("IntArray", torch.Tensor, np.ndarray)

# Elements (query rows x gallery size) ranked at once. Keeps each temporary at or below
# 32 MiB: glibc then serves repeated allocations from its heap instead of fresh mmap'd
# pages, whose page faults made torch's CPU ops ~5x slower in measurements.
_BLOCK_ELEMENTS = 1 << 22
# Elements of a given distance matrix ranked at once on CPU: there the only temporaries of
# that size are the candidates' keys (8 bytes per candidate, at most 256 MiB; the compare masks
# are per chunk, see _sorted_candidate_keys), and fewer, larger blocks ranked ~30% faster at
# Market-1501 size.
_CPU_MATRIX_BLOCK_ELEMENTS = 1 << 25
# Query rows whose candidate keys one CPU thread builds and sorts at a time (a few MiB of
# distances, so the compare's mask stays in cache).
_KEY_CHUNK_ROWS = 64
_MIN_KEY_CHUNK_ROWS = 8
# Sampling repetitions of torchreid's CUHK03 single-gallery-shot protocol.
_CUHK03_REPEATS = 10
_NO_VALID_QUERY = ("No valid query: no query identity appears in the gallery under another "
                   "camera (torchreid asserts the same).")


class RankResult(NamedTuple):
    """Scores over the valid queries: ``cmc[k]`` is the rank-(k+1) accuracy (float32)."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int


class _Gallery(NamedTuple):
    """Gallery labels on the ranking device, with indices grouped by pid for match look-ups."""

    pids: torch.Tensor
    camids: torch.Tensor
    by_pid: torch.Tensor  # gallery indices ordered by pid (stable)
    sorted_pids: torch.Tensor  # pids[by_pid]
    index_bits: int  # bits that hold a gallery index in a sort key


class _BlockScores(NamedTuple):
    """Sums over the valid queries of one block of queries."""

    first_match_hist: torch.Tensor  # (max_rank,) valid queries whose first match is at rank k+1
    ap_sum: torch.Tensor
    inp_sum: torch.Tensor
    num_valid: torch.Tensor


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                  g_camids: ArrayLike, max_rank: int = 50,
                  use_metric_cuhk03: bool = False) -> Tuple[np.ndarray, float]:
    """``(cmc, mAP)`` exactly as torchreid's ``metrics.evaluate_rank`` returns them.

    ``distmat`` (num_query x num_gallery, NumPy or torch, CPU or CUDA) and the label arrays
    are taken as torchreid takes them. ``cmc`` is a float32 array of ``max_rank`` entries
    (``num_gallery`` if smaller; with ``use_metric_cuhk03``, also at most the number of
    gallery identities, as torchreid's). Ties are broken by gallery index (module docstring).
    Raises ``ValueError`` when no query has a valid match.
    """
    result = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                                use_metric_cuhk03)
    return result.cmc, result.mAP


def evaluate_rank_full(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                       q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                       use_metric_cuhk03: bool = False) -> RankResult:
    """:func:`evaluate_rank` plus mINP and the number of valid queries.

    Where torchreid's ``evaluate_rank`` would fail (a query left with fewer than ``max_rank``
    gallery entries after junk removal makes its CMC rows ragged), the CMC continues
    naturally: a query stays correct at every rank after its first match.

    ``use_metric_cuhk03`` reproduces torchreid's CUHK03 single-gallery-shot CMC, draws
    included: it consumes NumPy's global random state exactly as torchreid's loop of
    ``np.random.choice`` calls does (same calls, same order), so after the same
    ``np.random.seed`` the CMC and the final random state are the same on tie-free inputs.
    mAP and mINP do not sample (torchreid's mAP does not either).
    """
    dist = _as_tensor(distmat)
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D, got shape {tuple(dist.shape)}")
    queries = _labels(q_pids, q_camids, dist.shape[0], "query", dist.device)
    gallery = _index_gallery(*_labels(g_pids, g_camids, dist.shape[1], "gallery", dist.device))
    max_rank = _capped_max_rank(max_rank, dist.shape[1])
    dist = _rankable(dist)
    rows = _block_rows(dist.shape[1], _CPU_MATRIX_BLOCK_ELEMENTS if dist.device.type == "cpu" else _BLOCK_ELEMENTS)
    blocks = ((dist[s:s + rows], slice(s, s + rows)) for s in range(0, dist.shape[0], rows))
    return _evaluate_blocks(blocks, queries, gallery, max_rank, use_metric_cuhk03)


def evaluate_features(query_features: torch.Tensor, gallery_features: torch.Tensor,
                      q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                      g_camids: ArrayLike, max_rank: int = 50, metric: str = "euclidean",
                      chunk_size: int = 512, use_metric_cuhk03: bool = False) -> RankResult:
    """:func:`evaluate_rank_full` straight from features, one chunk of queries at a time.

    Ranks the gallery as torchreid's ``compute_distance_matrix(..., metric)`` would:
    ``"euclidean"`` by ``|g|^2 - 2<q, g>`` (the squared distance less the per-query constant
    ``|q|^2``), ``"cosine"`` by ``-<q/|q|, g/|g|>`` (``1 - cos`` less the constant 1). Dropping
    the constants leaves the order unchanged up to float rounding, so results equal
    :func:`evaluate_rank` on torchreid's matrix except where two distances are within
    rounding error of each other; ties are judged on these scores. Features are ranked in
    float32 (float64 kept as is). On CPU the inner products go through NumPy's BLAS
    (OpenBLAS), which measured ~1.7x faster than torch's (MKL) on the AMD reference machine.

    Memory (G gallery images): one score buffer of ``min(chunk_size, num_query) x G``
    entries (4 bytes each in float32: 168 MB for 512 x 82,161), reused across chunks; the
    gallery's squared norms or a normalised copy of it; and ranking temporaries for one
    block of ``max(1, 2**22 // G)`` queries: at most ~64 bytes per block entry (~270 MB),
    usually far less, as only entries up to each query's hardest match are kept. The Q x G
    matrix is never formed. Results do not depend on ``chunk_size``.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"Unknown distance metric: {metric}. Choose 'euclidean' or 'cosine'.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    query, gallery_feats = _feature_pair(query_features, gallery_features)
    queries = _labels(q_pids, q_camids, query.shape[0], "query", query.device)
    gallery = _index_gallery(*_labels(g_pids, g_camids, gallery_feats.shape[0], "gallery",
                                      query.device))
    max_rank = _capped_max_rank(max_rank, gallery_feats.shape[0])
    if metric == "cosine":
        gallery_feats = F.normalize(gallery_feats, p=2, dim=1)
    g_sq = gallery_feats.pow(2).sum(1) if metric == "euclidean" else None
    buffer = _ScoreBuffer(min(chunk_size, query.shape[0]), gallery_feats)
    rows = _block_rows(gallery_feats.shape[0], _BLOCK_ELEMENTS)

    def blocks() -> Iterator[Tuple[torch.Tensor, slice]]:
        for start in range(0, query.shape[0], chunk_size):
            scores = buffer.scores(_query_side(query[start:start + chunk_size], metric), g_sq)
            for s in range(0, scores.shape[0], rows):
                block = scores[s:s + rows]
                yield block, slice(start + s, start + s + block.shape[0])

    return _evaluate_blocks(blocks(), queries, gallery, max_rank, use_metric_cuhk03)


SPLIT_METRICS = ("rank1", "mAP", "mINP")


def mean_over_splits(per_split: Dict[int, Dict[str, float]]) -> Dict[str, object]:
    """The result of a dataset evaluated on several random splits (iLIDS, PRID, GRID, VIPeR):
    the mean of each metric over the splits, as papers report it, with every split's own figures
    under ``splits`` (keyed by split id) and the ids under ``split_ids``."""
    ids = sorted(per_split)
    mean = {metric: float(np.mean([per_split[i][metric] for i in ids]))
            for metric in SPLIT_METRICS if all(metric in per_split[i] for i in ids)}
    return {**mean, "split_ids": ids, "splits": {str(i): dict(per_split[i]) for i in ids}}


def torchreid_has_cython() -> bool:
    """Whether the installed torchreid ranks with its compiled Cython extension.

    Upstream deep-person-reid built from source has it; the PyPI 0.2.5 repackaging does not.
    Both set ``IS_CYTHON_AVAI`` in ``metrics.rank``, under different package layouts.
    """
    from torchreid import metrics

    return bool(getattr(getattr(metrics, "rank", None), "IS_CYTHON_AVAI", False))


def torchreid_ranking_note() -> Optional[str]:
    """One line for a run about to rank with torchreid's own ``evaluate_rank`` (``test.rerank``,
    ``test.visrank`` need its whole-matrix pipeline), or None when that is compiled.

    torchreid's import-time warning about its Cython ranking is silenced in ``dcac_plugin``
    because every other path ranks here; this says it where it matters.
    """
    if torchreid_has_cython():
        return None
    return ("Note: test.rerank / test.visrank rank with torchreid's own evaluation, whose Cython extension is not "
            "built here: it runs in Python (about a minute and a half at Market-1501 size, far longer at MSMT17 size).")


# ----------------------------------------------------------------------------- inputs


def _as_tensor(values: ArrayLike, device: Optional[torch.device] = None) -> torch.Tensor:
    """A torch view of NumPy arrays (no copy) or of a tensor, moved to ``device`` if given."""
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return tensor if device is None else tensor.to(device)


def _labels(pids: ArrayLike, camids: ArrayLike, expected: int, side: str,
            device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(pids, camids)`` as int64 tensors on ``device``, checked against the matrix size."""
    pid_t, cam_t = (_as_tensor(x, device).reshape(-1).long() for x in (pids, camids))
    if pid_t.numel() != expected or cam_t.numel() != expected:
        raise ValueError(f"{side} pids/camids have {pid_t.numel()}/{cam_t.numel()} entries, "
                         f"expected {expected}")
    return pid_t, cam_t


def _index_gallery(pids: torch.Tensor, camids: torch.Tensor) -> _Gallery:
    """Groups gallery indices by pid and sizes the gallery-index field of the sort keys."""
    by_pid = torch.sort(pids, stable=True).indices
    index_bits = max(1, (pids.numel() - 1).bit_length())
    if index_bits > 30:
        raise ValueError(f"Gallery of {pids.numel()} entries is too large to rank (max 2**30)")
    return _Gallery(pids, camids, by_pid, pids[by_pid], index_bits)


def _capped_max_rank(max_rank: int, num_gallery: int) -> int:
    """torchreid's rule: never more ranks than gallery entries (with the same note)."""
    if num_gallery < max_rank:
        print(f"Note: number of gallery samples is quite small, got {num_gallery}")
        return num_gallery
    return max_rank


def _rankable(dist: torch.Tensor) -> torch.Tensor:
    """Row-contiguous distances of a dtype the sort keys handle: float32 (half-precision
    upcast exactly), else float64 (integers included)."""
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    elif dist.dtype != torch.float32:
        dist = dist.double()
    return dist.contiguous()


def _block_rows(num_gallery: int, budget: int) -> int:
    """Queries ranked at once: within the temporaries ``budget`` (elements) and the row field
    of the keys (63 bits = row + 32-bit distance code + gallery index)."""
    key_rows = 1 << (31 - max(1, (num_gallery - 1).bit_length()))
    return max(1, min(budget // max(num_gallery, 1), key_rows))


# ----------------------------------------------------------------------------- features


def _feature_pair(query: torch.Tensor, gallery: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both feature matrices as 2-D, same-width, contiguous float32 (float64 if either is)."""
    query = _as_tensor(query)
    gallery = _as_tensor(gallery, device=query.device)
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"Expected 2-D features of equal width, got {tuple(query.shape)} and "
                         f"{tuple(gallery.shape)}")
    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    return query.to(dtype).contiguous(), gallery.to(dtype).contiguous()


def _query_side(query: torch.Tensor, metric: str) -> torch.Tensor:
    """Query rows as they enter the inner product for ``metric``'s ranking score."""
    return F.normalize(query, p=2, dim=1) if metric == "cosine" else query


class _ScoreBuffer:
    """Ranking scores of one chunk of queries against the whole gallery, written into one
    buffer reused across chunks, so that memory stays at a single chunk's scores."""

    def __init__(self, max_rows: int, gallery: torch.Tensor) -> None:
        self.gallery = gallery
        self.buffer = torch.empty(max_rows, gallery.shape[0], dtype=gallery.dtype,
                                  device=gallery.device)

    def scores(self, query: torch.Tensor, g_sq: Optional[torch.Tensor]) -> torch.Tensor:
        """``|g|^2 - 2<q, g>`` when ``g_sq`` is given, else ``-<q, g>``; both rank like the
        distance (see :func:`evaluate_features`)."""
        out = self.buffer[:query.shape[0]]
        if out.device.type == "cpu":
            np.matmul(query.numpy(), self.gallery.numpy().T, out=out.numpy())
        else:
            torch.mm(query, self.gallery.T, out=out)
        return torch.add(g_sq, out, alpha=-2, out=out) if g_sq is not None else out.neg_()


# ----------------------------------------------------------------------------- ranking


def _evaluate_blocks(blocks: Iterable[Tuple[torch.Tensor, slice]],
                     queries: Tuple[torch.Tensor, torch.Tensor], gallery: _Gallery,
                     max_rank: int, use_metric_cuhk03: bool) -> RankResult:
    """Scores blocks of query rows (ranking scores, query slice) in query order."""
    sampler = _Cuhk03Sampler(gallery, max_rank) if use_metric_cuhk03 else None
    sums: List[_BlockScores] = []
    for dist, rows in blocks:
        q_pids, q_camids = queries[0][rows], queries[1][rows]
        sums.append(_score_block(dist, q_pids, q_camids, gallery, max_rank))
        if sampler is not None:
            sampler.add_block(dist, q_pids, q_camids)
    result = _combine(sums)
    return result if sampler is None else result._replace(cmc=sampler.cmc())


def _score_block(dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
                 gallery: _Gallery, max_rank: int) -> _BlockScores:
    """CMC histogram, AP and INP sums for a block of query rows."""
    kept_rank, good = _match_ranks(dist, q_pids, q_camids, gallery)
    num_good = good.sum(1)
    valid = num_good > 0
    good_index = good.cumsum(1).double()  # 1-based index among the query's matches
    ap = torch.where(good, good_index / kept_rank.clamp(min=1), 0.0).sum(1) / num_good.clamp(min=1)
    first = torch.where(good, kept_rank, kept_rank.new_tensor(max_rank + 1)).amin(1)
    hardest = torch.where(good, kept_rank, 0).amax(1)
    inp = num_good.double() / hardest.clamp(min=1)
    hist = torch.bincount((first[valid] - 1).clamp(max=max_rank), minlength=max_rank + 1)
    return _BlockScores(hist[:max_rank], ap[valid].sum(), inp[valid].sum(), valid.sum())


def _match_ranks(dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
                 gallery: _Gallery) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ranks, once junk is removed (1-based), of each query's valid matches.

    Returns ``(kept_rank, good)``, both (rows x M): row ``i`` lists the query's same-pid
    gallery entries in ranking order; ``good`` marks valid matches (other camera) and
    ``kept_rank`` is meaningful where ``good`` is set.
    """
    idx, present = _same_pid_entries(q_pids, gallery)
    match_dist = dist.gather(1, idx)
    junk = present & (gallery.camids[idx] == q_camids[:, None])
    good = present & ~junk
    hardest = torch.where(good, match_dist, -torch.inf).amax(1)
    if torch.isnan(hardest).any():
        raise ValueError("NaN distance at a valid match")
    # Matches beyond the hardest valid one change no score; they sort last.
    relevant = present & (match_dist <= hardest[:, None])
    position = torch.where(relevant, _positions(dist, hardest, idx, match_dist, relevant,
                                                gallery.index_bits),
                           torch.iinfo(torch.int64).max)
    position, order = torch.sort(position, dim=1)
    junk, good = junk.gather(1, order), good.gather(1, order)
    return position + 1 - (junk.cumsum(1) - junk.long()), good


def _same_pid_entries(q_pids: torch.Tensor, gallery: _Gallery) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(idx, present)`` (rows x M): the gallery indices holding each query's pid, padded
    to the block's largest group; ``present`` marks the real ones."""
    lo = torch.searchsorted(gallery.sorted_pids, q_pids)
    count = torch.searchsorted(gallery.sorted_pids, q_pids, right=True) - lo
    width = max(1, int(count.max()))
    offset = torch.arange(width, device=q_pids.device)
    present = offset < count[:, None]
    slot = torch.where(present, lo[:, None] + offset, 0)
    return gallery.by_pid[slot], present


def _positions(dist: torch.Tensor, hardest: torch.Tensor, idx: torch.Tensor,
               match_dist: torch.Tensor, relevant: torch.Tensor, index_bits: int) -> torch.Tensor:
    """0-based stable rank, within its row, of each ``relevant`` entry ``(row, idx)``: the
    number of entries of the row with a smaller (distance, gallery index)."""
    sorted_keys = _sorted_candidate_keys(dist, hardest, index_bits)
    block_rows = torch.arange(dist.shape[0], device=dist.device)[:, None]
    codes = _float32_code(match_dist)
    row_start = torch.searchsorted(sorted_keys, block_rows << (32 + index_bits))
    position = torch.searchsorted(sorted_keys, _pack(block_rows, codes, idx, index_bits)) - row_start
    if dist.dtype == torch.float32:
        return position
    # Distinct float64 distances may share a float32 code; the key then orders them by
    # gallery index. Only matches whose code is shared need their rank counted exactly.
    run_start, run_end = (torch.searchsorted(sorted_keys, (block_rows << (32 + index_bits))
                                             | (c << index_bits)) for c in (codes, codes + 1))
    shared_row, shared_slot = (relevant & (run_end - run_start > 1)).nonzero(as_tuple=True)
    position[shared_row, shared_slot] = _counted_positions(
        dist, shared_row, idx[shared_row, shared_slot], match_dist[shared_row, shared_slot])
    return position


def _counted_positions(dist: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                       values: torch.Tensor) -> torch.Tensor:
    """Stable rank of entries ``(rows, cols)`` (distances ``values``) by comparing them
    with their whole row, a bounded number of rows at a time."""
    step = max(1, _BLOCK_ELEMENTS // dist.shape[1])
    gallery_index = torch.arange(dist.shape[1], device=dist.device)
    counts = []
    for s in range(0, rows.numel(), step):
        row_dist, value = dist[rows[s:s + step]], values[s:s + step, None]
        before = (row_dist < value) | ((row_dist == value) & (gallery_index < cols[s:s + step, None]))
        counts.append(before.sum(1))
    return torch.cat(counts) if counts else rows.new_zeros(0)


def _sorted_candidate_keys(dist: torch.Tensor, hardest: torch.Tensor, index_bits: int) -> torch.Tensor:
    """The sorted keys (:func:`_pack`) of every entry no farther than its row's hardest valid
    match: nothing beyond it changes a score. Rows without a valid match (threshold -inf)
    yield only -inf distances, which nothing reads.

    On CPU, NumPy does the work (its SIMD compare, nonzero and sort are ~2x torch's here),
    in row chunks on a thread per torch thread: NumPy releases the GIL in each of these
    calls, and keys sort by row first, so sorted chunks concatenate into sorted keys."""
    if dist.device.type != "cpu":
        flat = torch.nonzero((dist <= hardest[:, None]).view(-1)).squeeze(1)
        rows = torch.div(flat, dist.shape[1], rounding_mode="floor")
        cols, values = flat - rows * dist.shape[1], dist.view(-1)[flat]
        return torch.sort(_pack(rows, _float32_code(values), cols, index_bits)).values
    dist_np, hardest_np = dist.numpy(), hardest.numpy()
    num_rows = dist_np.shape[0]
    threads = max(1, min(torch.get_num_threads(), num_rows))
    # Equal chunks, a few per thread, at most _KEY_CHUNK_ROWS rows each, and at least
    # _MIN_KEY_CHUNK_ROWS (a small block, e.g. evaluate_features' 51 MSMT17 rows, in a few tasks).
    num_chunks = max(threads * 4, -(-num_rows // _KEY_CHUNK_ROWS))
    num_chunks = min(num_chunks, max(threads, -(-num_rows // _MIN_KEY_CHUNK_ROWS)))
    chunk_rows = -(-num_rows // num_chunks)

    def chunk_keys(start: int) -> np.ndarray:
        block = dist_np[start:start + chunk_rows]
        flat = np.flatnonzero(block <= hardest_np[start:start + chunk_rows, None])
        rows, cols = np.divmod(flat, dist_np.shape[1])
        keys = _pack(rows + start, _float32_code(block.ravel()[flat]), cols, index_bits)
        keys.sort()
        return keys

    starts = range(0, num_rows, chunk_rows)
    if threads == 1:
        return torch.from_numpy(np.concatenate([chunk_keys(start) for start in starts]))
    return torch.from_numpy(np.concatenate(list(_key_pool(threads).map(chunk_keys, starts))))


@functools.lru_cache(maxsize=1)
def _key_pool(threads: int) -> ThreadPoolExecutor:
    """The threads that build candidate keys, made once per thread count (not once per block)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="dcac-rank")


def _pack(rows: IntArray, codes: IntArray, cols: IntArray, index_bits: int) -> IntArray:
    """One int64 per entry whose integer order is (row, distance code, gallery index):
    distinct keys, so sorting them gives each row's stable ranking order (torch or NumPy)."""
    return (rows << (32 + index_bits)) | (codes << index_bits) | cols


def _float32_code(values: Union[torch.Tensor, np.ndarray]) -> IntArray:
    """Order-preserving int64 code in ``[0, 2**32)`` of the float32 rounding of ``values``
    (torch or NumPy, the same codes): the IEEE bits with negatives' magnitude bits flipped.
    Exact for float32 (equal codes mean equal distances); for float64, rounding can give
    distinct distances one code."""
    if isinstance(values, np.ndarray):
        bits = (values.astype(np.float32) + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into 0.0
        return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) + (1 << 31)
    bits = (values.float() + 0.0).contiguous().view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + (1 << 31)


def _combine(blocks: Sequence[_BlockScores]) -> RankResult:
    """Averages the block sums over all valid queries, with torchreid's float32 CMC."""
    num_valid = int(sum(int(b.num_valid) for b in blocks))
    if num_valid == 0:
        raise ValueError(_NO_VALID_QUERY)
    hist = torch.stack([b.first_match_hist for b in blocks]).sum(0).cpu().numpy()
    # torchreid sums 0/1 float32 rows (exact counts) and divides in float32.
    cmc = np.cumsum(hist).astype(np.float32) / np.float32(num_valid)
    ap = float(sum(float(b.ap_sum) for b in blocks))
    inp = float(sum(float(b.inp_sum) for b in blocks))
    return RankResult(cmc, ap / num_valid, inp / num_valid, num_valid)


# ----------------------------------------------------------------------------- CUHK03


class _Cuhk03Sampler:
    """torchreid's single-gallery-shot CMC: per valid query and repetition, one random
    gallery image per identity (the query's own same-camera images removed).

    Draws come from NumPy's global random state in torchreid's order: query, repetition,
    identity in order of first appearance in the ranking, ``randint(0, images of that
    identity)``; blocks must therefore arrive in query order.
    """

    def __init__(self, gallery: _Gallery, max_rank: int) -> None:
        self.gallery = gallery
        self.identities, self.pid_codes = torch.unique(gallery.pids, return_inverse=True)
        # torchreid's per-query rows have one entry per gallery identity, up to max_rank.
        self.length = min(max_rank, self.identities.numel())
        self.rows: List[np.ndarray] = []

    def add_block(self, dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor) -> None:
        """Samples the CMC rows of the block's valid queries."""
        order = torch.sort(dist, dim=1, stable=True).indices
        same = self.gallery.pids[order] == q_pids[:, None]
        junk = same & (self.gallery.camids[order] == q_camids[:, None])
        valid = (same & ~junk).any(1)
        order, junk = order[valid], junk[valid]
        own = torch.searchsorted(self.identities, q_pids[valid])
        num_ids = self.identities.numel()
        # Junk gets the extra code ``num_ids`` so that it groups after every identity.
        ranked_codes = torch.where(junk, num_ids, self.pid_codes[order])
        by_code = torch.sort(ranked_codes, dim=1, stable=True).indices  # ranks grouped by identity
        sizes = torch.zeros(order.shape[0], num_ids + 1, dtype=torch.long, device=dist.device)
        sizes = sizes.scatter_add_(1, ranked_codes, torch.ones_like(ranked_codes))[:, :num_ids]
        starts = sizes.cumsum(1) - sizes
        appearance = torch.argsort(by_code.gather(1, starts), dim=1)  # torchreid's dict order
        draws = _draw(sizes.gather(1, appearance))  # (queries, repetitions, identities)
        draws_by_code = torch.empty_like(draws).scatter_(
            2, appearance[:, None, :].expand_as(draws), draws)
        picked = by_code.gather(1, (starts[:, None, :] + draws_by_code).flatten(1)).view_as(draws)
        own_pick = picked.gather(2, own[:, None, None].expand(-1, draws.shape[1], 1))
        position = (picked < own_pick).sum(2)  # picked images ranked before the query's own
        hits = (position[:, :, None] <= torch.arange(self.length, device=dist.device)).sum(1)
        # torchreid: a float32 sum of 0/1 rows (exact) divided in float32 by the repetitions.
        self.rows.append(hits.cpu().numpy().astype(np.float32) / np.float32(_CUHK03_REPEATS))

    def cmc(self) -> np.ndarray:
        """Mean CMC over the valid queries sampled so far (there is at least one: the
        Market-protocol pass over the same queries has already checked)."""
        all_cmc = np.concatenate(self.rows)
        # The expression torchreid ends with, so that the float32 sums agree bit for bit.
        return all_cmc.sum(0) / float(all_cmc.shape[0])


def _draw(sizes: torch.Tensor) -> torch.Tensor:
    """``randint(0, size)`` for every (query, repetition, identity), in C order, from
    NumPy's global state: one vectorised call yields the same stream as torchreid's
    sequence of ``np.random.choice`` calls."""
    highs = np.repeat(sizes.cpu().numpy()[:, None, :], _CUHK03_REPEATS, axis=1)
    return torch.from_numpy(np.random.randint(0, highs).astype(np.int64)).to(sizes.device)
