"""cost: instance prices, cost calculators, spot economics and the spot interruption drill."""
