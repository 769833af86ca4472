"""Measuring and improving retrieval: evaluation on judged queries (evaluation), tuning alpha
(tuning) and fine-tuning the embedder (finetune; its pairs in finetune_pairs, its before/after and
cross-validated evaluation in finetune_eval).
"""
