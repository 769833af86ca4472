"""The index's lifecycle: rebuilding behind the alias, swapping and rolling back (reindex).
"""
