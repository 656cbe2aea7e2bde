"""Stratum-1 replication (`pycvmfs snapshot`): plan.py decides what a replica holds,
copy.py copies one object verified, pool.py runs copies in parallel, snapshot.py orders it."""
