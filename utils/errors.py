"""One error path for every script: a user error ends with one line on stderr and exit 2.

A genuine bug still shows its traceback: only `UserError` is caught.
"""
import argparse
import sys


class UserError(Exception):
    """A problem the user can fix: bad flag, missing or malformed file, missing checkpoint."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what} ({where}): {fix}")


def warn(what: str, where: str, fix: str) -> None:
    """A problem that does not stop the run, on one stderr line: `warning: <what> (<where>): <fix>`."""
    print(f"warning: {what} ({where}): {fix}", file=sys.stderr)


def run_cli(main, parser):
    """Parse the command line, run `main(args)`, turn a `UserError` into one stderr line."""
    args = parser.parse_args()
    try:
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


class CliParser(argparse.ArgumentParser):
    """argparse with the project's one-line error (argparse's own prints the usage too)."""

    def error(self, message):
        print(f"error: {message} ({self.prog}): see {self.prog} --help", file=sys.stderr)
        sys.exit(2)
