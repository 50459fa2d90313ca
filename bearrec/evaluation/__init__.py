"""Evaluation: decode a split and collect the metrics (NDCG/HR/MRR/PR@K, RecBole's beyond-accuracy
metrics, the exact ranking and the gap's parts: lost, gained, reordered), the pruning
attribution of beam search, and the tables and figures that report them."""
