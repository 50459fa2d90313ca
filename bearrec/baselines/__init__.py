"""Conventional sequential recommenders, SASRec and BERT4Rec at RecBole strength, ranked over the full catalog:
the baselines of `bearrec compare`."""
