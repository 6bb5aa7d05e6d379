"""Offline HTML report of a scoring run (``medidiff report``)."""
