"""Training: the one loop every method goes through (``loop``), the protocol that sets each run
up (``protocol``, with the as-published switches of ``published``), cached features,
augmentation, and the demo's pretraining."""
