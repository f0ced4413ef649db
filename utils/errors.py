"""One error path for every script: a user error ends with one line on stderr and exit 2, an
interrupt (Ctrl-C) with one line and exit 130. A genuine bug still shows its traceback: only
`UserError` and `KeyboardInterrupt` are caught."""
import os
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
    """Parse the command line and run `main(args)` while holding the lock of its --output_dir
    (rank 0 holds it for a torchrun group); turn a `UserError` or an interrupt into one line."""
    from utils.io import OutputLock

    args = parser.parse_args()
    try:
        if os.environ.get("RANK", "0") == "0":
            with OutputLock(args.output_dir):
                return main(args)
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
