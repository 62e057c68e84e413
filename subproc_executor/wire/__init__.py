"""Spoken by every process: frames (``protocol``), typed payloads
(``messages``), moving frames over descriptors (``transport``) and the
descriptor helpers they share (``fdtools``). Imports nothing else of ours."""
