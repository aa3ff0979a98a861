"""The project's one exception type and the CLI wrapper that turns it into a one-line error."""

import functools
import sys


class RethinkError(Exception):
    """A problem the user can fix: the message names the file/key/value and what to do."""


class ConfigError(RethinkError):
    """The configuration is invalid; the message names the key path, the value and what is allowed."""


def cli_main(func):
    """Run a CLI entry point; a RethinkError becomes one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv)
        except RethinkError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
