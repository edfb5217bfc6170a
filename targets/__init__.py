"""targets room of layerwise (see DESIGN.md)."""
