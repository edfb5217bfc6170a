"""runtime room of layerwise (see DESIGN.md)."""
