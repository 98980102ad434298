"""Scores of a stream calibrated on itself: a planted surge of a rare pair must
outrank the normal slots, and a planted missing link should (a known gap)."""

from __future__ import annotations

import numpy as np
import pytest

from core import linkstream, selfscore, store
from core.config import ModelConfig, RunConfig, StreamConfig
from core.snapshots import build_snapshots

SLOTS = 800
SILENT = range(500, 540)
SURGE_SLOTS = range(300, 310)
CONFIG = RunConfig(
    stream=StreamConfig(bin_seconds=10, scales=(1, 4)),
    model=ModelConfig(hidden=8, dilations=(1, 2), own_lag=2, epochs=6, patience=6,
                      windows_per_epoch=6, seed=0),
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Six nodes; pair (0, 1) is in contact every slot except during SILENT, while
    both ends keep their other contacts; nodes 4 and 5, which never meet, meet
    in every slot of SURGE_SLOTS."""
    rng = np.random.default_rng(3)
    rows = []
    for t in range(SLOTS):
        if t not in SILENT:
            rows.append((0, 1, t))
        for u, v in ((0, 2), (1, 3), (2, 3), (2, 4), (3, 5)):
            if rng.random() < 0.3:
                rows.append((u, v, t))
        if t in SURGE_SLOTS:
            rows.append((4, 5, t))
    folder = tmp_path_factory.mktemp("selfscore")
    path = folder / "stream.txt"
    path.write_text("".join(f"{u},{v},{t}\n" for u, v, t in rows))
    workspace = store.Workspace.create(folder / "ws")
    linkstream.ingest_uvt(workspace, path, 10, undirected=True)
    origin = linkstream.slot_origin_us(linkstream.DEFAULT_ORIGIN)
    snapshots = build_snapshots(workspace.store_path, 10, origin_us=origin,
                                stop_us=origin + SLOTS * 10_000_000)
    return snapshots, selfscore.score_stream(snapshots, CONFIG)


def pair_column(scores: selfscore.StreamScores, u: str, v: str) -> int:
    index = {name: i for i, name in enumerate(scores.devices)}
    pairs = [tuple(p) for p in scores.pairs.tolist()]
    return pairs.index((index[u], index[v]))


def test_selfscore_shapes(scored):
    snapshots, scores = scored
    assert scores.pair.shape == (SLOTS, len(snapshots.pairs))
    assert scores.device.shape == (SLOTS, snapshots.num_devices)
    assert scores.graph.shape == (SLOTS,)
    assert np.isfinite(scores.graph).all()


# NOTE: the pair decoder reads both ends' latents at t, which carry the ends'
# present contacts, the pair's own included. So a pair that falls silent while
# its ends stay active is expected to be silent, and scores as normal.
@pytest.mark.xfail(strict=True, reason="the pair decoder sees the pair's own present "
                   "contacts through its ends, so a missing link is expected missing")
def test_selfscore_missing_link_scored(scored):
    _, scores = scored
    column = pair_column(scores, "0", "1")
    silent = np.array(list(SILENT))
    near = np.arange(silent[0] - 20, silent[-1] + 20)
    normal = np.setdiff1d(np.arange(50, SLOTS), near)
    values = scores.pair[:, column]
    # Expected-but-missing contacts exist as elements and score above the
    # pair's normal slots.
    assert np.isfinite(values[silent]).all()
    assert np.median(values[silent]) > np.quantile(values[normal], 0.9)


def test_selfscore_surge_nodes(scored):
    # Two nodes meet in slots where their history has no such contact.
    _, scores = scored
    surge = np.array(list(SURGE_SLOTS))
    index = {name: i for i, name in enumerate(scores.devices)}
    near = np.arange(surge[0] - 20, surge[-1] + 20)
    normal = np.setdiff1d(np.arange(50, SLOTS), near)
    for node in ("4", "5"):
        device = scores.device[:, index[node]]
        assert device[surge].mean() > np.quantile(device[normal], 0.95)
