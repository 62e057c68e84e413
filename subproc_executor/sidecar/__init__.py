"""Runs in the sidecar process (``python -m subproc_executor.sidecar``):
start-up (``main``), the main loop (``loop``), its job bookkeeping
(``scheduler``) and the pools (``backends``). Never imports ``parent``."""
