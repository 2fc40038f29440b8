"""``python -m numaplan``: the same as the ``numaplan`` command."""

from numaplan.cli.main import console_main

console_main()
