"""One error path for every script: a user error ends with one line on stderr and exit 2, an
interrupt (Ctrl-C) with one line and exit 130. A genuine bug still shows its traceback: only
`UserError` is caught."""
import os
import signal
import sys


class UserError(Exception):
    """A problem the user can fix: bad flag, missing or malformed file, missing checkpoint."""

    def __init__(self, what: str, where: str, fix: str):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(f"{what} ({where}): {fix}")


def warn(what: str, where: str, fix: str) -> None:
    """A problem that does not stop the run, on one stderr line: `warning: <what> (<where>): <fix>`."""
    print(f"warning: {what} ({where}): {fix}", file=sys.stderr)


def _interrupted(signum, frame):
    """Ctrl-C: stop at once. Every file is written to a temporary name and renamed, so nothing is
    half-written whenever this happens, and every long stage resumes. Exiting here, rather than
    raising KeyboardInterrupt wherever the main thread is, cannot leave a lock (a DataLoader's
    queues, say) taken and the process hung on its way out."""
    print("interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(130)


def run_cli(main, parser):
    """Parse the command line and run `main(args)` while holding the lock of its --output_dir
    (rank 0 holds it for a torchrun group); a `UserError` or Ctrl-C ends it with one line."""
    from utils.io import OutputLock

    args = parser.parse_args()
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        if os.environ.get("RANK", "0") == "0":
            with OutputLock(args.output_dir):
                return main(args)
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGINT, previous)
