"""Studies on the embedded digits: `python -m rfengine.study` (the equal-compute protocol); v1 the first comparison."""
