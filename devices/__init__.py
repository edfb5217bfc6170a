"""devices room of layerwise (see DESIGN.md)."""
