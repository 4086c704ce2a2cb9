"""The one error type users see: a clear one-line message, exit code 2 from the CLI."""


class EdgelinError(Exception):
    """A bad input or an unusable file. The message is shown to the user as is."""
