"""Actions on the answers: moving duplicates aside with a journal, and undoing it.

Above the search stage (it acts on ``duplicates``' groups) and beside the
pipeline; it writes to the index only to make it follow the files it moves.
"""
