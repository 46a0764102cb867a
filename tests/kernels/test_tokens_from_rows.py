"""The token epilogue of the CUDA path (``triton_tokens.tokens_from_rows``), run in Triton's interpreter.

On a GPU the fused CUDA pass writes each row's max |x| and ``cuda_median`` each row's lower median; here
torch computes those per-row inputs (independently of the kernels) and the epilogue's criterion, counts and
records (whose channel the epilogue looks up in x) must equal the float64 reference's (itself checked against
the numpy oracle in ``test_update.py``). ``cuda_median`` itself is checked
against the reference on the GPU (``gpu_checks.py``).
"""

from __future__ import annotations

import pytest
import torch

from maxact_kernels import ActivationStats
from tests.kernels.test_update import row_ids
from tests.utils import DTYPES, assert_verbose_allclose, assert_verbose_equal, make_ties, make_values


def per_row_inputs(x2d: torch.Tensor, mask, t_val: float, token_median: str):
    """(row_absmax, row_median) as the CUDA passes define them (-1 = none)."""
    a = x2d.float().abs()
    nan = torch.isnan(a)
    has = ~nan.all(dim=1)
    if mask is not None:
        has &= mask.reshape(-1)
    filled = torch.where(nan, torch.full_like(a, -1.0), a)
    amax = filled.max(dim=1).values
    med = torch.nanmedian(a, dim=1).values  # the lower median over non-NaN values
    row_absmax = torch.where(has, amax, torch.tensor(-1.0))
    need = has
    if token_median == "candidates":
        need = has & ((amax.double() > t_val) | (amax == row_absmax.max()))
    return row_absmax, torch.where(need, med, torch.tensor(-1.0))


def sun_of(st: ActivationStats) -> dict:
    return st.summary()["sun"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("token_median", ["all", "candidates", "candidates listed"])
@pytest.mark.parametrize("values", ["spread", "ties"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("shape", [(1, 8), (37, 24), (2, 70, 16)], ids=str)
def test_epilogue_matches_reference(triton_modules, dtype, token_median, values, masked, shape, rng):
    """``candidates listed``: the GPU path of candidate medians, where the median kernel lists the rows that
    need a median and counts the tokens (``cuda_median.row_median(select=...)``; here torch does both), and
    the epilogue reads only the listed rows, then folds the records in the same program."""
    tokens = triton_modules[1]
    listed = token_median.endswith("listed")
    token_median = token_median.split()[0]
    make = make_values if values == "spread" else make_ties
    x = make(shape, dtype, rng)
    if values == "spread" and x.numel() > 20:
        x.view(-1)[7] = 900.0  # a candidate above the threshold
    sids, pos = row_ids(shape)
    mask = torch.from_numpy(rng.random(shape[:-1]) < 0.7) if masked else None
    t_val, t_ratio = (100.0, 10.0) if values == "spread" else (1.5, 1.2)
    kw = dict(track_tokens=True, sun_abs_threshold=t_val, sun_ratio_threshold=t_ratio, token_median=token_median)
    c = shape[-1]
    x2, sids, pos = x.reshape(-1, c), sids.reshape(-1), pos.reshape(-1)
    mask = mask.reshape(-1) if mask is not None else None
    parts = (slice(None), slice(0, max(1, x2.shape[0] // 2)))  # the counts and records accumulate
    st = ActivationStats(c, device="cpu", backend="triton", **kw)
    want = ActivationStats(c, device="cpu", backend="reference", **kw)
    for part in parts:
        mp = mask[part] if mask is not None else None
        amax, med = per_row_inputs(x2[part], mp, t_val, token_median)
        if listed:
            picked = (med >= 0).nonzero().flatten().int()
            rows = torch.full((amax.numel() + 1,), -9, dtype=torch.int32)   # only rows[:n] may be read
            rows[: picked.numel()] = picked
            n = torch.tensor([picked.numel()], dtype=torch.int32)
            st.state.tok_counts[0] += int((amax >= 0).sum())
            tokens.tokens_from_rows(x2[part], amax, med, sids[part], pos[part], st.state, listed=(rows, n))
        else:
            tokens.tokens_from_rows(x2[part], amax, med, sids[part], pos[part], st.state)
        want.update(x2[part], mp, sids[part], pos[part])
    got, exp = sun_of(st), sun_of(want)
    for key in ("mean_ratio", "std_ratio"):
        a, b = got.pop(key), exp.pop(key)
        if a is None or b is None:
            assert a is None and b is None, key
        else:
            assert_verbose_allclose(a, b, rtol=1e-12, name=key)
    assert_verbose_equal(got, exp, "sun")
    assert exp["n_tokens"] > 0 or masked

