"""The vtab1k study's grids are the grids the paper ran, point by point (the published grid shipped
with vpeft), in vpeft's default protocol and as published; the one deliberate deviation is named."""
from __future__ import annotations

from collections import defaultdict

import pytest

from vpeft.config import load_study
from vpeft.report.published_grid import PUBLISHED_GRID, grid_key, read_published_grid

USER_KEYS = ["study.data.root=/data/vtab-1k", "model.weights=/w/ViT-B_16.npz"]

# The deviation vpeft makes on purpose (docs/protocol.md, "The grids"): full fine-tuning diverges
# at the published lr {1e-3, 1e-2}, so vpeft sweeps lower learning rates; everything else of
# its grid (weight decay, no hyper-parameters) is the published one.
FULL_LR_VPEFT = {1e-5, 5e-5, 1e-4, 5e-4, 1e-3}
FULL_LR_PUBLISHED = {1e-3, 1e-2}


@pytest.fixture(scope="module")
def published():
    """method -> the set of its published grid points (the same on every task: checked)."""
    rows = read_published_grid()
    by_pair = defaultdict(set)
    keys = defaultdict(set)
    for p in rows:
        keys[p.method] |= set(p.hparams)
    for p in rows:
        by_pair[(p.task, p.method)].add(grid_key(p.lr, p.weight_decay, p.hparams, keys[p.method]))
    grids = {}
    for (task, method), points in by_pair.items():
        assert grids.setdefault(method, points) == points, f"{method}: {task}'s grid differs"
    return grids, keys


def vpeft_grid(plan, method, published_keys):
    points = plan.points[method]
    swept = {k for k in {k for p in points for k in p.hparams}
             if len({repr(p.hparams.get(k)) for p in points}) > 1}
    keys = swept | published_keys
    return {grid_key(p.optim["lr"], p.optim["weight_decay"], p.hparams, keys) for p in points}


@pytest.mark.parametrize("protocol", [[], ["train=vtab_as_published"]], ids=["vpeft", "as_published"])
def test_vtab1k_grids_are_the_published_grids(published, protocol):
    grids, keys = published
    plan = load_study("vtab1k", USER_KEYS + protocol)
    assert set(plan.methods) == set(grids), "the study's methods are the published ones"
    differ = {}
    for method in plan.methods:
        ours, theirs = vpeft_grid(plan, method, keys[method]), grids[method]
        if method == "full":
            assert {k[0] for k in ours} == FULL_LR_VPEFT
            assert {k[0] for k in theirs} == FULL_LR_PUBLISHED
            ours, theirs = ({k[1:] for k in ours}, {k[1:] for k in theirs})  # all but lr
        if ours != theirs:
            differ[method] = (sorted(ours - theirs)[:3], sorted(theirs - ours)[:3])
    assert not differ, f"grid points only in vpeft / only published: {differ}"


def test_published_grid_has_one_selected_point_per_pair():
    rows = read_published_grid()
    assert len(rows) == 9804
    selected = defaultdict(list)
    for r in rows:
        if r.selected:
            selected[(r.task, r.method)].append(r)
    pairs = {(r.task, r.method) for r in rows}
    assert len(pairs) == 304 and set(selected) == pairs
    assert all(len(v) == 1 and v[0].test_top1 is not None for v in selected.values())


def test_a_bad_row_names_file_line_and_column(tmp_path):
    text = PUBLISHED_GRID.read_text(encoding="utf-8").splitlines(keepends=True)
    header = [line for line in text if line.startswith("#") or line.startswith("task,")]
    bad = tmp_path / "grid.csv"
    bad.write_text("".join(header) + 'dtd,lora,0.001,1e-4,"{""rank"": 8}",abc,99.0,0,\n')
    with pytest.raises(ValueError, match=rf"{bad}:{len(header) + 1}: val200_top1 'abc'"):
        read_published_grid(bad)
    bad.write_text("task,method,lr\n")
    with pytest.raises(ValueError, match="header lacks the column"):
        read_published_grid(bad)
