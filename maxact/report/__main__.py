"""python -m maxact.report: an HTML report, figures and summary.json from maxact or paper results."""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """examples:
  python -m maxact.report results/Qwen3-8B/stats.json --out report/
  python -m maxact.report ../shared/reference/max_act_llm --out paper_report/
  python -m maxact.report results/ paper_results/ --out all/ --pairs PAIRS.json
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m maxact.report",
        description="Analyze activation statistics and write report.html, figures (PNG, SVG) and summary.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("results", nargs="+", metavar="RESULT",
                    help="maxact stats.json, paper *_activation_stats.json, or a directory holding them")
    io.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    io.add_argument("--pairs", metavar="PAIRS.json", default=None,
                    help='matched comparisons: a JSON list of {"a", "b", "label"}; ratio = M(b) / M(a) '
                         "(default: the paper's pairs, where both checkpoints are present)")
    io.add_argument("--title", default="maxact activation report", metavar="TEXT", help="page title")
    an = p.add_argument_group("analysis")
    an.add_argument("--sun-abs", type=float, default=100.0, metavar="T",
                    help="Sun criterion: absolute threshold on |x| (default: %(default)s)")
    an.add_argument("--sun-ratio", type=float, default=1000.0, metavar="R",
                    help="Sun criterion: threshold on |x| / median |x| of the token (default: %(default)s)")
    an.add_argument("--formats", default="int8,int4,fp8_e4m3", metavar="LIST",
                    help="quantization formats, comma-separated (int8, int4, fp8_e4m3, fp8_e5m2; default: %(default)s)")
    an.add_argument("--policies", default="max,percentile:99.9,percentile:99.99,mse", metavar="LIST",
                    help="clip policies, comma-separated (default: %(default)s)")
    an.add_argument("--family", action="append", default=[], metavar="NAME=FAMILY",
                    help="override a checkpoint's family (repeatable)")
    an.add_argument("--repeats", type=int, default=5, metavar="N",
                    help="subsample repeats for the stability table (default: %(default)s)")
    an.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the subsampling (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {}
    for item in args.family:
        name, sep, fam = item.partition("=")
        if not sep:
            raise SystemExit(f"--family expects NAME=FAMILY, got {item!r}")
        overrides[name] = fam
    from maxact.report import build_report

    summary = build_report(
        args.results, args.out, pairs=args.pairs, title=args.title, t_val=args.sun_abs, t_ratio=args.sun_ratio,
        formats=[f for f in args.formats.split(",") if f], policies=[x for x in args.policies.split(",") if x],
        family_overrides=overrides, repeats=args.repeats, seed=args.seed,
    )
    # A short table on stdout: what the page opens with.
    print(f"{'checkpoint':28s} {'M':>12s}  {'carrier':22s} sun")
    for name, c in summary["checkpoints"].items():
        print(f"{name:28s} {c['M']!s:>12}  {c['carrier_site']:22s} {c['sun_pass']}")
    for p in summary["pairs"]:
        if p["ratio"] is not None:
            print(f"{p['b']} / {p['a']}: {p['ratio']:.3g}x  ({p['label']})")
    print(f"report: {args.out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
