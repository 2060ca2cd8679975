"""The generators of the shipped configs."""
