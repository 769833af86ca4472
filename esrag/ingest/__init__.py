"""The ingest pipeline: plan -> embed -> write -> prune (pipeline), how text is cut into chunks
(chunking) and what each chunk's embedding sees (context), and the run report (report).
"""
