"""Where documents come from: the Source contract (base.py) and the built-in sources."""
