"""Moved to :mod:`numaplan.tiny_llama.model` (it ships in the package, so that ``numaplan bench``
runs from an installed wheel); its names stay importable here."""

from numaplan.tiny_llama.model import *  # noqa: F403
