"""Answering questions from retrieved passages: prompts, numbered sources and streaming (rag), the checks on
an answer's citations (checks) and follow-up questions in a conversation (conversation).
"""
