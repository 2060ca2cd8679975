"""Ranked retrieval pictures: each query beside its top-k gallery matches (green right, red wrong).

torchreid draws these (``utils.visualize_ranked_results``) but only from inside a test
run with ``test.visrank``; here they come from a finished run, for a few queries, without
evaluating the whole test set again.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
from torchreid import utils


def save_ranked_results(distmat, query: Sequence, gallery: Sequence, out_dir: str, topk: int = 10,
                        max_queries: Optional[int] = None, width: int = 128, height: int = 256) -> List[str]:
    """Draw the first ``max_queries`` rows of ``distmat`` [num_query, num_gallery]; returns the files written.

    ``query`` and ``gallery`` are torchreid dataset lists of (path, pid, camid, ...). As in
    torchreid's protocol, gallery images of the query's identity and camera are skipped.
    """
    distmat = distmat.detach().cpu().numpy() if torch.is_tensor(distmat) else np.asarray(distmat)
    count = len(query) if max_queries is None else min(max_queries, len(query))
    query = list(query)[:count]
    utils.visualize_ranked_results(distmat[:count], (query, list(gallery)), "image", width=width, height=height,
                                   save_dir=out_dir, topk=topk)
    # torchreid names each picture after its query image.
    names = dict.fromkeys(osp.splitext(osp.basename(item[0]))[0] + ".jpg" for item in query)
    return [osp.join(out_dir, name) for name in names]


def ranked_results_for_run(run: str, out_dir: str, dataset: Optional[str] = None, topk: int = 10,
                           max_queries: Optional[int] = 20) -> List[str]:
    """Ranked pictures of a run's model (Euclidean distance) on ``dataset``, by default its first target."""
    from ...run.launcher import build_datamanager
    from ..extract import eval_transform, extract_features
    from ..inference import load_trained_model

    model, cfg, _ = load_trained_model(run)
    dataset = dataset or cfg.data.targets[0]
    if dataset not in cfg.data.targets:
        # The data manager builds test loaders for the targets only.
        cfg.defrost()
        cfg.data.targets = [dataset]
    manager = build_datamanager(cfg, use_gpu=False)
    query, gallery = manager.test_dataset[dataset]["query"], manager.test_dataset[dataset]["gallery"]
    count = len(query) if max_queries is None else min(max_queries, len(query))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    transform = eval_transform(cfg)
    # Only the queries drawn are encoded; the ranking needs the whole gallery.
    qf = extract_features(model, [item[0] for item in query[:count]], transform, cfg.test.batch_size, device=device)
    gf = extract_features(model, [item[0] for item in gallery], transform, cfg.test.batch_size, device=device)
    return save_ranked_results(torch.cdist(qf, gf), query[:count], gallery, out_dir, topk=topk,
                               width=cfg.data.width, height=cfg.data.height)


__all__ = ["ranked_results_for_run", "save_ranked_results"]
