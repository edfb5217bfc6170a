"""One error hierarchy. User mistakes are LayerwiseError: the CLI prints one line, exits 2."""


class LayerwiseError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class SourceError(LayerwiseError):
    """A model SPEC that cannot be resolved or loaded."""


class ExportError(LayerwiseError):
    """A model that torch.export cannot lift."""


class TargetError(LayerwiseError):
    """A target that cannot emit or run the model (missing SDK, unmappable op)."""


class VerificationError(LayerwiseError):
    """An artifact whose outputs miss the reference beyond tolerance."""


class BundleError(LayerwiseError):
    """A bundle directory that is missing, corrupt or refused (existing --out)."""
