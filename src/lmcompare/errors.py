"""The one exception of the project: bad input or configuration, with a message that names the input and the fix."""


class WorkflowInputError(Exception):
    """Bad input or configuration. The message names the offending input and how to fix it."""
