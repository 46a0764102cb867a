"""``python -m maxact.export``: a scan's activation ranges in the layouts quantization tools load.

Exit codes: 0 written, 2 bad input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys

from maxact.export.formats import DEFAULT_DTYPE, DEFAULT_POLICY, EXPORT_FORMATS, SCALE_DTYPES, ExportError

log = logging.getLogger("maxact.export")

EPILOG = """\
examples:
  python -m maxact.scan --model ./qwen3-8b --sites linear-inputs --out results/qwen3-8b
  python -m maxact.export results/qwen3-8b --format smoothquant --out act_scales/qwen3-8b.pt --module-prefix model.
  python -m maxact.export results/qwen3-8b --format input-scales --out scales.safetensors \\
      --policy percentile:99.99 --dtype fp8-e4m3
  python -m maxact.export results/qwen3-8b --format json --out quant.json

formats:
  smoothquant   torch.save'd {module: float32[in_features]}: per-input-channel max |x| (SmoothQuant act_scales)
  input-scales  safetensors {<module>.input_scale: float32 scalar} = clip / qmax, and <out>.json with each
                module's clip, scale, SQNR and saturated share
  json          every site's amax, clip, scale and SQNR under every policy (max, percentile:99.9,
                percentile:99.99, mse) and format (int8, int4, fp8_e4m3, fp8_e5m2)
needs a scan made with --sites linear-inputs (or all); smoothquant also needs the channel maxima (the
default; not --no-channels). docs/EXPORT.md describes every field. exit codes: 0 done, 2 bad input.
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: ...``) with exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m maxact.export",
                description="Export a maxact scan's activation statistics for quantization tools.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", metavar="RESULT_DIR", help="the scan's output directory (or its stats.json)")
    g = p.add_argument_group("export")
    g.add_argument("--format", metavar="FORMAT", required=True, choices=EXPORT_FORMATS,
                   help=f"{', '.join(EXPORT_FORMATS)}")
    g.add_argument("--out", metavar="PATH", required=True, help="file to write (input-scales adds PATH.json)")
    g.add_argument("--policy", metavar="P", default=None,
                   help=f"input-scales clip policy: max, percentile:P (e.g. percentile:99.99) or mse "
                        f"(default: {DEFAULT_POLICY})")
    g.add_argument("--dtype", metavar="DTYPE", default=None,
                   help=f"input-scales target format: {' or '.join(SCALE_DTYPES)} (default: {DEFAULT_DTYPE})")
    g.add_argument("--module-prefix", metavar="PREFIX", default="",
                   help="prepended to every module name, e.g. 'model.' to name the modules of a "
                        "*ForCausalLM (default: none: names inside the scanned base model)")
    g = p.add_argument_group("logging")
    g.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m maxact.export``; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    logging.basicConfig(level=max(logging.DEBUG, min(level, logging.ERROR)),
                        format="%(levelname)s %(name)s: %(message)s")
    if args.format != "input-scales":
        for flag, value in (("--policy", args.policy), ("--dtype", args.dtype)):
            if value is not None:
                log.warning("%s applies to --format input-scales only; ignored for %s", flag, args.format)
    from maxact.export import export   # numpy / torch / safetensors only after parsing

    try:
        written = export(args.result, args.format, args.out, policy=args.policy, dtype=args.dtype,
                         module_prefix=args.module_prefix)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
