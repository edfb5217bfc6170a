"""Recording a run in the results history without ever losing the run's result."""

from __future__ import annotations


def record_run(kind: str, payload: dict, db: str | None) -> int | None:
    """Append the run to the results history unless db is 'none'; returns the run id, or
    None with one warning on stderr when the database cannot be written (the run's results
    are still returned)."""
    if db == "none":
        return None
    import sys

    from layerwise.runtime.history import HistoryError, record

    try:
        return record(kind, payload, db)
    except HistoryError as e:
        print(f"layerwise: warning: results not recorded in DB: {e.reason}; {e.advice} "
              "(or --db none to record nothing)", file=sys.stderr)
        return None
