"""The chaos soak (``make soak``): three gateway instances, the sweep function, a scheduler
and the three emulators under a seeded schedule of random faults, with a population of a few
hundred clients and the invariants checked at the end. docs/soak.md describes it.

The harness's modules are not named ``test_*``: pytest does not collect them; the pure parts
(schedule, invariants, report) have unit tests in ``tests/unit/test_soak_*.py``.
"""
