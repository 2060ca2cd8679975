"""Speed options."""
