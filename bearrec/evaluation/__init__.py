"""Evaluation: decode a split and collect the metrics (NDCG/HR/PR@K, the exact ranking's ceiling), the pruning
attribution of beam search, and the tables and figures that report them."""
