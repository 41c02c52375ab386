"""The one exception for mistakes a user can fix: caught once at each entry point."""


class UserError(Exception):
    """Bad input or configuration. Shown as one line on stderr; the process exits with status 2."""
