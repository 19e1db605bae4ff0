"""Command line: ``medseg <command> ...``.

Each command lives in its own module with ``register(subparsers)``; a ``MedsegError``
becomes one line on stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from medseg import __version__
from medseg.errors import ConfigError, MedsegError

COMMAND_MODULES = (
    "medseg.cli.segment",
    "medseg.cli.phantom",
    "medseg.cli.model",
    "medseg.cli.train",
    "medseg.cli.evaluate",
    "medseg.cli.serve",
)


class OptionParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 3 like any other bad option.

    argparse's own exit status 2 would read as "bad DICOM input" (``DicomInputError``);
    subcommand parsers inherit this class through ``add_subparsers``.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(ConfigError.exit_code, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        prog="medseg", description="AI segmentation node for a PACS: SAM2-UNet, DICOM-SEG out."
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pydicom reports oddities of real files as warnings; they matter to a developer (-v),
    # not on every successful run, and their text may quote header values.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except MedsegError as exc:
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
