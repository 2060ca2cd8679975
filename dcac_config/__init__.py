"""dcac-reid's configuration, answered before any model is imported."""
