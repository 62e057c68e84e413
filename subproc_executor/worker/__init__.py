"""Runs in the workers: one job at a time (``job``) and the picklers that
turn jobs and outcomes into bytes (``pickling``, also used by the parent).
Imports nothing of ours but ``wire``."""
