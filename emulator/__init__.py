"""The local stack: Firestore and Auth emulators, the gateway, and (later) the sweep function.

``python -m emulator up`` (what ``make up`` runs) starts everything and prints where it is;
the test suite reuses :mod:`emulator.procs` to start the same processes.
"""
