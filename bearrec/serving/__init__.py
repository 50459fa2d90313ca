"""Serving: the :class:`~bearrec.serving.recommender.Recommender` (one history in, top-K items out, any decoder), and
the HTTP app of `bearrec serve` with its page."""
