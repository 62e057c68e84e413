"""Runs in the user's process: the public executor (``executor``), its
settings (``settings``), the job table (``jobtable``), the supervisor of the
current sidecar (``supervisor``), starting and watching one sidecar
(``launcher``) and decoding outcomes (``outcome``). Never imports
``sidecar``."""
