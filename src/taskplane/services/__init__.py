"""Use cases: transactions, the dispatch loop, timers. Talks to adapters only through ``ports``."""
