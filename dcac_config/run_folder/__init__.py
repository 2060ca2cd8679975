"""A run's folder (``data.save_dir``): whether a run may write there, its lock, its log, and what a
stopped run leaves. Plain file handling, so that ``dcac train`` can refuse a run before it imports
any model, and the run itself opens its folder by the same rules."""
