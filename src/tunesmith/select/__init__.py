"""Data selection: choose the examples worth training on (random, stratified, RDS+, IFD, LESS,
k-means diversity, ZIP-FIT), with every expensive feature cached by content hash."""
