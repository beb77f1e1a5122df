"""The C_T data-copying test of Meehan, Chaudhuri & Dasgupta 2020 on encoder features: the model-independent half
(`copying_reference`, computed once per reference) and the statistic of one model's samples (`data_copying`)."""

from __future__ import annotations

import math

import torch

from bench.eval.metrics import nearest_centre, nearest_distance
from bench.schema import COPYING, COPYING_CELLS, COPYING_SAMPLES, COPYING_TEST_SHARE

COPYING_MIN_SAMPLES = 20  # a cell enters C_T with more generated samples than this: Meehan et al.'s τ = 20 / m


def copying_reference(train: torch.Tensor, test: torch.Tensor, cells: int = 20, seed: int = 0) -> dict:
    """The half of the C_T test (`data_copying`) that does not depend on the model, computed once per reference:
    the k-means cells of the training features (Lloyd's algorithm from `cells` seeded training points, at most 50
    iterations; an emptied cell keeps its centre), the cell of each training and test feature, and each test
    feature's distance to its nearest training feature within its own cell."""
    g = torch.Generator().manual_seed(seed)
    train = train.double()
    centres = train[torch.randperm(len(train), generator=g)[:cells]].clone()
    for _ in range(50):
        assign = nearest_centre(train, centres)
        moved = centres.clone()
        for c in range(len(centres)):
            members = train[assign == c]
            if len(members):
                moved[c] = members.mean(0)
        if torch.allclose(moved, centres):
            break
        centres = moved
    train_cell = nearest_centre(train, centres)
    test_cell = nearest_centre(test, centres)
    return {
        "centres": centres,
        "train_cell": train_cell,
        "test_cell": test_cell,
        "test_nn": _within_cells(test, test_cell, train, train_cell, len(centres)),
    }


def _within_cells(x: torch.Tensor, x_cell: torch.Tensor, train: torch.Tensor, train_cell: torch.Tensor, cells: int):
    """Each row of x's distance to the nearest training feature of its own cell (inf where the cell holds none)."""
    out = torch.full((len(x),), math.inf, dtype=torch.float64)
    for c in range(cells):
        rows, members = x_cell == c, train[train_cell == c]
        if rows.any() and len(members):
            out[rows] = nearest_distance(x[rows], members)
    return out


def data_copying(
    generated: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    cells: int = 20,
    seed: int = 0,
    reference: dict | None = None,
) -> dict | None:
    """The C_T statistic of Meehan, Chaudhuri & Dasgupta 2020 ("A Non-Parametric Test to Detect Data-Copying in
    Generative Models"), as their code computes it. The feature space is cut into `cells` cells by k-means on the
    training features. In each cell, the distances of the generated samples (Q_m) to their nearest training feature
    *of that cell* are compared with those of the test images (P_n) by the Mann-Whitney U statistic (U = pairs
    where the generated distance is larger, ties half), z-scored under H₀ with the authors' continuity correction:
    Z_U = (U − (mn/2 − 1/2)) / √(mn(m + n + 1)/12). C_T averages the Z_U of the cells holding more than
    COPYING_MIN_SAMPLES generated samples (their τ = 20/m), weighted by each cell's share of test images.

    Equal sizes: the larger of the generated and test sets is subsampled (seeded) to the smaller one, so m = n.
    C_T ≪ 0 means data copying (the authors flag below −3); ≈ 0 none; > 0 samples further from the training data
    than test data (underfitting). C_T is a z-score and grows like √m for one model: C_T/√m is the per-sample
    effect size (the report shows both).
    Returns {COPYING: C_T, COPYING_CELLS: cells used, COPYING_TEST_SHARE: their share of the test images,
    COPYING_SAMPLES: m = n}, or None when no cell has enough generated samples (a model collapsed into a corner).
    `reference`: copying_reference(train, test, cells, seed), when computed once for many models."""
    if reference is None:
        reference = copying_reference(train, test, cells, seed)
    centres, test_cell, test_nn = reference["centres"], reference["test_cell"], reference["test_nn"]
    size = min(len(generated), len(test_nn))
    g = torch.Generator().manual_seed(seed)
    pick_gen = torch.randperm(len(generated), generator=g)[:size].sort().values
    pick_test = torch.randperm(len(test_nn), generator=g)[:size].sort().values
    generated, test_cell, test_nn = generated[pick_gen], test_cell[pick_test], test_nn[pick_test]
    gen_cell = nearest_centre(generated, centres)
    gen_nn = _within_cells(generated.double(), gen_cell, train.double(), reference["train_cell"], len(centres))
    total = weight = 0.0
    used = 0
    for c in range(len(centres)):
        q, p = gen_nn[gen_cell == c], test_nn[test_cell == c]
        m, n = len(q), len(p)
        if m <= COPYING_MIN_SAMPLES or n == 0:  # τ; a cell without test images weighs nothing
            continue
        u = (q[:, None] > p[None, :]).sum().item() + 0.5 * (q[:, None] == p[None, :]).sum().item()
        z = (u - (m * n / 2 - 0.5)) / math.sqrt(m * n * (m + n + 1) / 12)
        share = n / size
        total, weight, used = total + share * z, weight + share, used + 1
    if weight == 0:
        return None
    return {COPYING: total / weight, COPYING_CELLS: float(used), COPYING_TEST_SHARE: weight, COPYING_SAMPLES: size}
