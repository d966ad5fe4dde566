"""Executors: adapters that run attempts behind the ``Executor`` port (``services/ports.py``).

``local`` runs argv commands as processes on this machine, through a node supervisor daemon that outlives the
server (see ``executors/README.md``); ``simulated`` runs nothing: its virtual nodes hold a task's request for its
declared ``simulated_duration`` (``executors/simulated``).
"""
