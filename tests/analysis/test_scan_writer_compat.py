"""The reader reads what the scanner's writer writes (maxact.scan.writer, CONTRACTS.md section 4).

The same fabricated activations go through the scanner's own ``write_results`` and through the
test fabricator; loading either gives the same statistics, carrier and analyses.
"""

import numpy as np
import pytest

from fabricate import QUANTILES, abs_hist, site_record
from maxact import analysis as A
from maxact.results import load_result

writer = pytest.importorskip("maxact.scan.writer", reason="the scanner's writer is not in this tree")
from maxact.scan.config import ScanConfig  # noqa: E402
from maxact.scan.result import SampleTable, ScanResult, SiteResult  # noqa: E402


def scan_result_from(fab) -> ScanResult:
    sites = {}
    for name, arrays in fab.raw.items():
        comp, layer = fab.components[name]
        rec = site_record(arrays, comp, layer, 100.0, 1000.0, 8, with_tokens=False)
        x = np.concatenate(arrays)
        summary = {k: rec[k] for k in ("count", "mean", "std", "rms", "abs_mean", "min", "max", "abs_max",
                                        "nan_count", "posinf_count", "neginf_count", "sun")}
        summary.update(sum=float(x.sum()), sum_sq=float((x.astype(np.float64) ** 2).sum()),
                       abs_sum=float(np.abs(x).sum()), abs_hist=abs_hist(x),
                       channel_abs_max=np.abs(x).max(0).astype(np.float32),
                       sample_abs_max=np.array([np.abs(a).max() for a in arrays], np.float32),
                       topk={k: np.array([e[k] for e in rec["topk"]]) for k in ("abs", "value", "sample",
                                                                                  "position", "channel")})
        sites[name] = SiteResult(name=name, component=comp, layer=layer, module=rec["module"],
                                 num_channels=rec["num_channels"], summary=summary,
                                 quantiles={q: float(rec["quantiles"][str(q)]) for q in QUANTILES}, calls=3)
    n = len(fab.category)
    samples = SampleTable(category=np.where(np.arange(n) == 0, -1, fab.category).astype(np.int32),
                          category_names=list(fab.category_names), num_tokens=np.full(n, 5, np.int64),
                          corpus_index=fab.corpus_index)
    md = {"model_name": "tiny-fab-written", "model_type": "qwen3", "num_layers": 4, "hidden_size": 16,
          "corpus": {"path": "c.jsonl", "num_samples": n}}
    return ScanResult(config=ScanConfig(model="random:tiny", corpus="c.jsonl", out="unused"), metadata=md,
                      sites=sites, samples=samples)


def test_writer_output_reads_like_the_fabricated_one(fab, tmp_path):
    json_path, _ = writer.write_results(scan_result_from(fab), tmp_path / "written")
    got, want = load_result(json_path), load_result(fab.path)
    assert got.layout == "maxact" and list(got.sites) == list(want.sites)
    for name, site in got.sites.items():
        ref = want.sites[name]
        assert (site.abs_max, site.max, site.min, site.component, site.layer) == (
            ref.abs_max, ref.max, ref.min, ref.component, ref.layer)
        np.testing.assert_array_equal(site.abs_hist, ref.abs_hist)
        np.testing.assert_array_equal(site.sample_abs_max, ref.sample_abs_max)
        assert site.quantiles == ref.quantiles
        keys = ("abs", "value", "sample", "position", "channel")  # the fabricator adds token fields
        assert site.topk == [{k: e[k] for k in keys} for e in ref.topk]
    carrier, ref_carrier = A.global_max(got), A.global_max(want)
    assert (carrier.M, carrier.site) == (got.stored_global_max, got.stored_global_site)
    assert (carrier.M, carrier.signed_value, carrier.site, carrier.component) == (
        ref_carrier.M, ref_carrier.signed_value, ref_carrier.site, ref_carrier.component)
    assert A.sun_criterion(got).n_pass == A.sun_criterion(want).n_pass
    assert "coverage" in got.extra
    # sample 0 is unlabelled (-1) in the written file: it becomes a category of its own
    peaks = A.sample_peaks(got)
    assert peaks.category_names[-1] == "unlabelled" and peaks.category[0] == len(fab.category_names)
    assert A.stability(peaks, sizes=(10,), repeats=2)[0].full_M == carrier.M
