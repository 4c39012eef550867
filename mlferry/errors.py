"""Errors named for the condition, each carrying what went wrong and the way out."""


class MlferryError(Exception):
    """Base class: a failure the user can act on; the CLI prints it without a trace."""

    exit_code = 1


class ConfigError(MlferryError):
    """A setting, flag or job spec has a value that cannot be used."""

    exit_code = 2


class RegistryError(MlferryError):
    """The model registry could not be used."""

    exit_code = 3


class RegistryUnreachable(RegistryError):
    """No answer from the registry host within the bounded retries."""


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or they are missing)."""


class ModelNotFound(RegistryError):
    """The registered model, alias, stage or version does not exist."""


class InputError(MlferryError):
    """Input data that cannot be scored; names the column and the row."""

    exit_code = 4

    def __init__(self, message: str, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column = column
        self.row = row


class SchemaMismatch(InputError):
    """Input columns or values do not fit the model's signature."""


class EmptyInput(InputError):
    """The input file holds no bytes at all."""


class OutputBusy(MlferryError):
    """Another run with the same run key holds the output lock."""

    exit_code = 5
