"""``python -m taskplane`` is the ``taskplane`` command."""

from taskplane.cli.main import main

main()
