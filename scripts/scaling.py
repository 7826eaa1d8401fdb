"""Write the computed table of docs/scaling.md (between its `scaling:begin` / `scaling:end` markers).

python scripts/scaling.py                       # rewrite the table from results/bench/shared-ris-b-h100-train
python scripts/scaling.py --check               # exit 1 if the table in the doc is not what the code computes
python scripts/scaling.py --bench results/bench/<device>/train/bench.json --print
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from risbench.scaling import markdown, measured_steps, scaling_rows, trainable_parameters  # noqa: E402

BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
DEFAULT_BENCH = Path("results/bench/shared-ris-b-h100-train/bench.json")


def render_doc(doc: str, table: str) -> str:
    """`doc` with the text between the markers replaced by `table`."""
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"error: docs/scaling.md has no {BEGIN} ... {END} markers to put the table between")
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{table}{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="a `risbench bench --out` bench.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "scaling.md")
    parser.add_argument("--check", action="store_true", help="compare with the doc instead of writing it")
    parser.add_argument("--print", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    bench = args.bench if args.bench.is_absolute() else ROOT / args.bench
    if not bench.exists():
        msg = f"error: {args.bench} not found; expected a bench.json written by `risbench bench --out`"
        print(msg, file=sys.stderr)
        return 2
    params = trainable_parameters("shared-ris-b")
    table = markdown(params, args.bench, scaling_rows(params, measured_steps(bench)))
    if args.print:
        print(table, end="")
        return 0
    doc = args.doc.read_text()
    new = render_doc(doc, table)
    if args.check:
        if new != doc:
            print(f"{args.doc}: the table is not what scripts/scaling.py computes; run it", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
