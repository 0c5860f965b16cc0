"""`crm`: command-line tool for operating the CRM services."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="crm", description="Operate the CRM services.")


def main(argv: Sequence[str] | None = None) -> None:
    build_parser().parse_args(argv)
    sys.exit(0)
