"""The benchmark of libbpf-batch: tool code run from a source checkout, never shipped.

``python -m bench`` (``make bench``) runs its sections, each a module here with
``run(args) -> dict``, listed in ``config.SECTIONS``: ``drain`` (fill, walk and drain maps in C
and in Python, side by side, each run checking its own result; see ``drain.py``) and the
sections other features add. The report is a table per section on stdout and, with ``--json
FILE``, one JSON object holding every section's dict under its name.
"""
