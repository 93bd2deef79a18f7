"""Recovery of jobs a dead pilot left behind (see jobrecovery.py)."""
