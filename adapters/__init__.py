"""Built-in adapters, one module per implementation, registered as ``bnspec.adapters`` entry
points in bnspec's pyproject exactly like a third party's. No module here imports its framework
at import time: each does so in ``Adapter.setup``, inside its own worker process."""
