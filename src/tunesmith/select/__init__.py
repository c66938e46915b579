"""Data selection: choose the examples worth training on (random, stratified, RDS+, IFD, LESS,
k-means diversity, ZIP-FIT, a response-loss quality filter that IFD runs after by default), with
every expensive feature cached by content hash."""
