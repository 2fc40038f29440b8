"""Moved to :mod:`numaplan.tiny_llama.build` (it ships in the package, so that ``numaplan bench``
runs from an installed wheel); its names stay importable here."""

from numaplan.tiny_llama.build import *  # noqa: F403
from numaplan.tiny_llama.build import main

if __name__ == "__main__":
    raise SystemExit(main())
