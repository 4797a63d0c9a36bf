"""Runtimes for the deploy form (issue 22): one module per runtime, see the modules."""
