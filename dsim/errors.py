"""Errors that reach the user as one line and exit code 2 (bad input) or 1 (a failed run)."""


class DsimError(Exception):
    """Bad input or an impossible request: the CLI prints the message alone and exits 2."""

    exit_code = 2


class RunFailed(DsimError):
    """The run started but a node failed or stopped answering: exit 1."""

    exit_code = 1
