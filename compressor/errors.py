"""User-facing errors.

Anything a user can cause (bad recipe, missing path, out-of-range plan) raises a
``CompressorError``; the CLI prints it as one line and exits with code 2. Bugs stay
ordinary exceptions so their tracebacks are not hidden.
"""


class CompressorError(Exception):
    """An error caused by user input; its message is a complete one-line explanation."""


class RecipeError(CompressorError):
    """A recipe field is unknown, missing or out of range."""


class PlanError(CompressorError):
    """A pruning plan does not fit the model it is applied to."""


class ModelLoadError(CompressorError):
    """A model could not be found, loaded or is of an unsupported architecture."""
