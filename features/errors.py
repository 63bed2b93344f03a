"""The errors a user's input can cause in the feature layer; each message names the file or key.
Kept apart (no dependencies) so the stage entry points can catch them without importing the
extractors."""


class StoreError(RuntimeError):
    """A shard is missing, incomplete, or made under a different configuration."""


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""
