"""Benchmarks on public real data sets, against their published results.

Each data set has its own module `bench/real_<name>.py` with
`run(data_dir: Path, quick: bool) -> dict` returning `table` (markdown), `caveats`
(one line) and `headline` (figures by name). This command runs the modules whose
folder exists under the data folder, prints each table with its caveat line under
it, and prints as its last line one JSON object with every headline figure.

    PYTHONPATH=. .venv/bin/python -m bench.real --data DIR [--only NAME] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Module name to the data set's folder under the data folder.
DATA_SETS = {"mad": "mad_hospital", "darpa": "darpa98", "smd": "smd", "batadal": "batadal"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.real",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=os.environ.get("TGLOC_DATA"),
                        help="folder holding the data sets (default: $TGLOC_DATA)")
    parser.add_argument("--only", choices=sorted(DATA_SETS),
                        help="run one data set only")
    parser.add_argument("--quick", action="store_true",
                        help="a short version of each benchmark, for a smoke test")


def run(args: argparse.Namespace) -> int:
    if not args.data:
        print("error: no data folder; pass --data DIR or set TGLOC_DATA",
              file=sys.stderr)
        return 2
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: data folder not found: {data}", file=sys.stderr)
        return 2
    headline: dict = {}
    ran = 0
    for name, folder in DATA_SETS.items():
        if args.only not in (None, name):
            continue
        if not (data / folder).is_dir():
            print(f"{name}: skipped, {data / folder} not found\n")
            continue
        try:
            module = importlib.import_module(f"bench.real_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.real_{name}":
                raise
            print(f"{name}: skipped, this checkout has no bench/real_{name}.py\n")
            continue
        result = module.run(data, args.quick)
        print(f"## {name}\n\n{result['table']}\n\n{result['caveats']}\n", flush=True)
        headline.update(result["headline"])
        ran += 1
    if ran == 0:
        print(f"error: none of the data sets ({', '.join(DATA_SETS.values())}) "
              f"found under {data}", file=sys.stderr)
        return 2
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
