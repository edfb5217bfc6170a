"""compiler room of layerwise (see DESIGN.md)."""
