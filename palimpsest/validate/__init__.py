"""validate: score the verdict over a population of audited cases whose truth is known by construction."""
