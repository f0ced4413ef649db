"""User errors: a problem the user can fix ends the script with one line on stderr and exit 2
(utils/cli.py `run_cli`); a genuine bug still shows its traceback: only `UserError` is caught."""
import sys


class UserError(Exception):
    """A problem the user can fix: bad flag, missing or malformed file, missing checkpoint."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what} ({where}): {fix}")

    def __reduce__(self):  # rebuilt by its fields, so a worker process can hand it over
        return type(self), (self.what, self.where, self.fix)


def warn(what: str, where: str, fix: str) -> None:
    """A problem that does not stop the run, on one stderr line: `warning: <what> (<where>): <fix>`."""
    print(f"warning: {what} ({where}): {fix}", file=sys.stderr)
