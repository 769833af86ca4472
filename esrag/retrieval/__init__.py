"""Hybrid retrieval: normalisation and fusion of the BM25 and kNN sides (fusion) and the searcher that runs
one request against a store and fuses it (search).
"""
