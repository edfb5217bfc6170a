"""analysis room of layerwise (see DESIGN.md)."""
