"""The ``taskplane`` command line (typer + rich), a thin layer over ``taskplane.sdk``."""
