"""Stands in for the rfc3987-syntax package in the embedded Ray's processes.

`import ray` imports jsonschema, whose format checkers import rfc3987-syntax
where it is installed (the notebook extras bring it), and that package builds
its grammar at import: 2-3 s of every Ray process's start on a busy 2-core
machine (its GCS agents, every worker and so every trial), for an IRI format
check none of them runs. This directory leads PYTHONPATH for the processes the
embedded Ray starts (study.driver.environment.lean_start), so there the import
fails as if the package were not installed and jsonschema goes on without that
one checker, as it does wherever the package is absent.
"""

raise ImportError("rfc3987_syntax is not loaded in resstudy's embedded Ray processes (no IRI format checks there)")
